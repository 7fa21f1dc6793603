"""edge/heap.py: the agent keeps freed heap for the next publish window (glibc only)."""

from __future__ import annotations

import platform

import pytest

from edge.heap import retain_freed_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_trim_threshold_is_accepted_on_glibc() -> None:
    assert retain_freed_heap(64 << 20) is True
