"""Old versions are removed from the device, keeping the current one and the previous."""

from __future__ import annotations

from pathlib import Path

from edge.supervisor import install


def _installed(root: Path, version: str) -> None:
    d = install.version_dir(root, version)
    (d / "venv").mkdir(parents=True)
    (d / "venv" / "big").write_bytes(b"x" * 1000)
    (d / install.INSTALLED).write_text(version)


def test_prune_keeps_current_and_previous_and_removes_the_rest(tmp_path: Path) -> None:
    for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        _installed(tmp_path, v)
    (tmp_path / "versions" / "5.0.0").mkdir()  # a half install (no marker)
    (tmp_path / "versions" / ".removing-0.9.0").mkdir()  # a removal cut by a power loss
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "4.0.0.bundle").write_bytes(b"b")
    install.switch_current(tmp_path, "3.0.0")

    removed = install.prune_versions(tmp_path, {"2.0.0"})

    assert removed == ["1.0.0", "4.0.0", "5.0.0"]
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["2.0.0", "3.0.0"]
    assert install.current_version(tmp_path) == "3.0.0"
    assert install.is_installed(tmp_path, "2.0.0") and install.is_installed(tmp_path, "3.0.0")
    assert list((tmp_path / "downloads").iterdir()) == []


def test_prune_never_removes_what_current_points_at(tmp_path: Path) -> None:
    _installed(tmp_path, "1.0.0")
    install.switch_current(tmp_path, "1.0.0")
    assert install.prune_versions(tmp_path, set()) == []
    assert install.is_installed(tmp_path, "1.0.0")


def test_prune_of_an_empty_root_does_nothing(tmp_path: Path) -> None:
    assert install.prune_versions(tmp_path, {"1.0.0"}) == []
