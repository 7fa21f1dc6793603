"""Child processes the gateway starts (servers, agents, workers) and stops by PID.

Children run in their own session, so a Ctrl-C in the terminal reaches only us and we stop
them in order; and on Linux they get SIGTERM if we die, so none is ever orphaned.
A child may run as another account (`Account`): a root supervisor runs the edge agent as
its own unprivileged user that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class Account:
    """A local user a child runs as: its uid, primary gid and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"no such user {name!r} (bootstrap creates it)") from None
        if pw.pw_uid == 0:
            raise ConfigError(f"user {name!r} is root: the agent must not run as root")
        groups = tuple(g for g in os.getgrouplist(name, pw.pw_gid) if g != pw.pw_gid)
        return cls(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def spawn(
    args: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    user: Account | None = None,
) -> subprocess.Popen[bytes]:
    """Start `args` with stdout and stderr appended to `log_path`, as `user` if given.

    The log is opened here, by us, so the child needs no right to the log directory.
    subprocess drops to the user after fork (setgroups, setgid, then setuid), so the child
    keeps none of our groups; `extra_groups=()` would keep none at all, we give it the
    user's own supplementary groups as a login would (initgroups)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        env = user.environ(dict(os.environ) if env is None else env)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else list(user.groups),
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
    return proc.wait()


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a power cut would; reaps the process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
