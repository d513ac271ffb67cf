"""Atomic output: a failed write leaves nothing behind, a successful one replaces."""

from __future__ import annotations

import json

import pytest

from relcomp._io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_directory_moves_the_folder_into_place(tmp_path):
    target = tmp_path / "parent" / "bundle"
    with atomic_directory(target) as building:
        assert building != target
        assert not target.exists()
        (building / "model.onnx").write_bytes(b"onnx")
    assert names(target) == ["model.onnx"]
    assert names(target.parent) == ["bundle"]


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_atomic_directory_leaves_nothing_when_the_body_raises(tmp_path, interruption):
    target = tmp_path / "bundle"
    with pytest.raises(interruption), atomic_directory(target) as building:
        (building / "half-written.bin").write_bytes(b"x")
        raise interruption()
    assert not target.exists()
    assert names(tmp_path) == []


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_atomic_directory_keeps_the_old_folder_when_the_body_raises(tmp_path, interruption):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(interruption), atomic_directory(target) as building:
        (building / "new.txt").write_text("new")
        raise interruption()
    assert names(target) == ["old.txt"]
    assert names(tmp_path) == ["bundle"]


def test_atomic_directory_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as building:
        (building / "new.txt").write_text("new")
    assert names(target) == ["new.txt"]
    assert (target / "new.txt").read_text() == "new"
    assert names(tmp_path) == ["bundle"]  # no backup or temporary left


def test_atomic_writes_create_parents_and_leave_no_temporary(tmp_path):
    binary = atomic_write_bytes(tmp_path / "a" / "x.bin", b"\x00\x01")
    text = atomic_write_text(tmp_path / "a" / "x.txt", "héllo")
    payload = atomic_write_json(tmp_path / "a" / "x.json", {"b": [1, 2.5, None]})
    assert binary.read_bytes() == b"\x00\x01"
    assert text.read_text(encoding="utf-8") == "héllo"
    assert json.loads(payload.read_text()) == {"b": [1, 2.5, None]}
    assert names(tmp_path / "a") == ["x.bin", "x.json", "x.txt"]


def test_atomic_write_interrupted_leaves_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "x.txt", "old")

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("relcomp._io.os.replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert names(tmp_path) == ["x.txt"]
