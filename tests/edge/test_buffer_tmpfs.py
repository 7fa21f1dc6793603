"""A real full disk: the buffer on a 2 MiB tmpfs, filled, freed and filled again (issue 12).

Below the agent: the buffer itself must never raise a raw sqlite3 error, must count every
reading it could not keep, and must store again once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import BufferStoreError
from tests.edge.test_buffer import _add, _balanced, _policy


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill_free_fill(tmpfs: Path) -> tuple[int, int, int, int]:
    """(sent, refused with BufferStoreError, dropped as disk_full, buffered)."""
    ballast = tmpfs / "ballast"
    ballast.write_bytes(os.urandom(1_200_000))
    buf = _policy(tmpfs / "b.sqlite3", "drop_oldest", max_bytes=1 << 30)
    sent = 0
    errors = 0
    for cycle in range(2):
        for _ in range(60):  # bounded: ~1.2 MB of incompressible payload per cycle
            try:
                _add(buf, 10, 20_000)
            except BufferStoreError:
                errors += 1  # the buffer's own error, never a raw sqlite3 one
            sent += 10
        if cycle == 0:
            ballast.unlink()  # space returns
    acct = _balanced(buf)["mqtt0"]
    buf.close()
    return sent, errors, acct.dropped["disk_full"], acct.buffered


def test_a_real_full_disk_drops_counts_and_recovers(tmpfs: Path) -> None:
    sent, errors, dropped, buffered = _fill_free_fill(tmpfs)
    assert dropped > 0  # the reserve let the drops and their counters commit
    assert buffered > 0  # stored again once the ballast was freed
    # every reading is buffered, counted as dropped, or in a flush refused to the caller
    assert buffered + dropped + 10 * errors == sent, (sent, errors, dropped, buffered)
