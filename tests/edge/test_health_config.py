"""Bad config and unusable paths: `gateway edge run` says which key and which path in one
line and exits 2, no traceback (issue 12). Run as the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _config(tmp_path: Path, **lines: str) -> Path:
    body = {"site": '"s1"', "agent": '"a1"', "data_dir": f'"{tmp_path / "agent"}"'} | lines
    path = tmp_path / "agent.toml"
    text = "\n".join(f"{k} = {v}" for k, v in body.items() if "." not in k)
    nats = {k.split(".", 1)[1]: v for k, v in body.items() if k.startswith("nats.")}
    if nats:
        text += "\n[nats]\n" + "\n".join(f"{k} = {v}" for k, v in nats.items())
    path.write_text(text + "\n")
    return path


def _refused(config: Path) -> str:
    """Run the agent; it must exit (the old code ran on, retrying, or printed a traceback)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app", "edge", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,  # kills it after the deadline
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running after 30 s: {exc.stderr!r}") from None
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 2, (code, out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_wrong_key_is_named(tmp_path: Path) -> None:
    line = _refused(_config(tmp_path, data_dri='"/tmp/x"'))
    assert "data_dri" in line and "Extra inputs are not permitted" in line


def test_a_data_dir_under_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    bad = tmp_path / "plain-file" / "agent"
    line = _refused(_config(tmp_path, data_dir=f'"{bad}"'))
    assert line.startswith("gateway: data_dir: ") and str(bad) in line, line


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write in: a read-only tmpfs as root, mode 0555 otherwise."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        mnt.chmod(0o555)
        yield mnt
        mnt.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_an_unwritable_data_dir_is_named(tmp_path: Path, read_only_dir: Path) -> None:
    bad = read_only_dir / "agent"
    line = _refused(_config(tmp_path, data_dir=f'"{bad}"'))
    assert line.startswith("gateway: data_dir: ") and str(bad) in line, line


def test_an_existing_but_unwritable_data_dir_is_named(tmp_path: Path, read_only_dir: Path) -> None:
    line = _refused(_config(tmp_path, data_dir=f'"{read_only_dir}"'))
    assert line.startswith("gateway: data_dir: ") and str(read_only_dir) in line, line


def test_a_missing_creds_file_is_named(tmp_path: Path) -> None:
    creds = tmp_path / "nope.creds"
    line = _refused(_config(tmp_path, **{"nats.creds_file": f'"{creds}"'}))
    assert line.startswith("gateway: nats.creds_file: ") and str(creds) in line, line


def test_an_unreadable_creds_file_is_named(tmp_path: Path) -> None:
    creds = tmp_path / "creds-dir.creds"
    creds.mkdir()  # unreadable as a file, for root too
    line = _refused(_config(tmp_path, **{"nats.creds_file": f'"{creds}"'}))
    assert line.startswith("gateway: nats.creds_file: ") and str(creds) in line, line
