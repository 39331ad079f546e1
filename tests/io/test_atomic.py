"""The one atomic-write helper (maskcd.io.atomic): rename on success, nothing left on errors, overwrite refused."""

from __future__ import annotations

import pytest

from maskcd.errors import OutputExistsError
from maskcd.io.atomic import TEMP_RE, atomic_outputs, atomic_write, temp_path, write_text_atomic


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "out.json"
    with atomic_write(target, tag="0123456789ab") as tmp:
        assert tmp.parent == tmp_path and tmp.name == ".out.json.0123456789ab.tmp.json"
        assert not target.exists()
        tmp.write_text("done")
        (tmp_path / f"{tmp.name}-journal").write_text("side file")  # named after the temporary: removed too
    assert target.read_text() == "done"
    assert names(tmp_path) == ["out.json"]


def test_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        (tmp_path / f"{tmp.name}.tiles.tif").write_bytes(b"scratch")
        (tmp_path / f"{tmp.name}.dir").mkdir()
        raise RuntimeError("boom")
    assert names(tmp_path) == []


def test_exception_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, overwrite=True) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and names(tmp_path) == ["out.txt"]


def test_overwrite_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "out.gpkg"
    target.write_text("old")
    ran = []
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_write(target) as tmp:
        ran.append(tmp)
    assert ran == [] and target.read_text() == "old" and names(tmp_path) == ["out.gpkg"]


def test_an_output_that_appears_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(OutputExistsError, match=str(target)), atomic_write(target) as tmp:
        tmp.write_text("mine")
        target.write_text("someone else's")
    assert target.read_text() == "someone else's" and names(tmp_path) == ["out.txt"]


def test_overwrite_replaces_files_and_folders(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "1")
    write_text_atomic(tmp_path / "a.txt", "2")
    assert (tmp_path / "a.txt").read_text() == "2"
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "old").write_text("x")
    with atomic_write(folder, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert names(folder) == ["new"] and names(tmp_path) == ["a.txt", "ds"]


def test_several_outputs_are_renamed_together_or_not_at_all(tmp_path):
    targets = [tmp_path / "o.gpkg", tmp_path / "o_prob.tif", tmp_path / "o_mask.tif"]
    with pytest.raises(FileNotFoundError, match="o_mask.tif"), atomic_outputs(targets, tag="abcdef012345") as staged:
        staged[0].write_text("g")
        staged[1].write_text("p")  # the mask is never written
    assert names(tmp_path) == []
    with atomic_outputs(targets, tag="abcdef012345") as (g, p, m):
        for path in (g, p, m):
            path.write_text(path.name)
        assert names(tmp_path) == sorted(t.name for t in (g, p, m))
    assert names(tmp_path) == sorted(t.name for t in targets)
    assert (tmp_path / "o_mask.tif").read_text() == ".o_mask.tif.abcdef012345.tmp.tif"


def test_a_non_owner_only_gets_the_names(tmp_path):
    target = tmp_path / "o.tif"
    target.write_text("main rank's")
    with atomic_outputs([target], tag="abcdef012345", owner=False) as staged:  # no exists check, no rename
        assert staged[0] == temp_path(target, "abcdef012345")
        staged[0].write_text("the main rank writes this")
    assert target.read_text() == "main rank's" and staged[0].exists()


def test_temp_names_are_recognised_by_the_sweep_pattern(tmp_path):
    tmp = temp_path(tmp_path / "changes.gpkg", "0123456789ab")
    for name in (tmp.name, f"{tmp.name}-journal", f"{tmp.name}.tiles.tif", f".{tmp.name}.maskcd-tiles"):
        m = TEMP_RE.match(name)
        assert m and m.group(1) == "0123456789ab", name
    for name in ("changes.gpkg", ".changes.gpkg", ".keep-me", ".maskcd-map.0123456789ab.lock"):
        assert not TEMP_RE.match(name), name
