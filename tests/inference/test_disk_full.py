"""A full disk is one line naming the path and the space needed, exit code 2, and nothing left behind: both the early
free-space check (fed a small figure) and ENOSPC while writing tiles or the GeoPackage."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import numpy as np
import pytest

from maskcd.cli.map import main
from maskcd.inference.cleanup import estimate_run_bytes, is_enospc
from maskcd.inference.tiling import grid_windows

FAST = ["--model", "fc-ef", "--tile", "64", "--overlap", "16", "--device", "cpu", "--workers", "0", "-q"]
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def pair(tmp_path, geotiff_writer):
    rng = np.random.default_rng(3)
    a = rng.integers(20, 220, (3, 96, 128), dtype=np.uint8)
    b = a.copy()
    b[:, 20:60, 30:90] = 250
    src = tmp_path / "in"
    src.mkdir()
    return geotiff_writer(src / "a.tif", a), geotiff_writer(src / "b.tif", b)


def _run(pair, out_dir, capsys):
    rc = main([str(pair[0]), str(pair[1]), "-o", str(out_dir / "o.gpkg"), *FAST])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_free_space_check_fails_early_with_one_line(pair, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).used, 50_000))
    rc, err = _run(pair, out, capsys)
    assert rc == 2 and len(err) == 1, err
    est = estimate_run_bytes(96, 128, 64, 16)
    need_kb = (est["tiles"] + est["prob"] + est["mask"]) / 1024
    assert err[0].startswith(f"maskcd-map: error: not enough free space in {out.resolve()}: this run needs about "
                             f"{need_kb:.1f} KB there"), err
    assert "only 48.8 KB is free" in err[0] and "128×96 scene" in err[0]
    assert list(out.iterdir()) == []


def test_enough_space_passes_the_check(pair, tmp_path, monkeypatch, capsys):
    est = estimate_run_bytes(96, 128, 64, 16)
    need = est["tiles"] + est["prob"] + est["mask"]
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).used, need))
    rc, err = _run(pair, tmp_path, capsys)
    assert rc == 0, err


def test_enospc_while_writing_tiles_is_one_line_and_leaves_nothing(pair, tmp_path, monkeypatch, capsys):
    from maskcd.inference.store import TileStore

    out = tmp_path / "out"
    out.mkdir()
    writes = []

    def full(self, i, prob):
        writes.append(i)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, i, prob)

    real_write = TileStore.write
    monkeypatch.setattr(TileStore, "write", full)
    rc, err = _run(pair, out, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "no space left on the device while writing " in err[0] and "tiles.f16" in err[0], err
    assert "this run needs about" in err[0] and "free some space" in err[0]
    assert list(out.iterdir()) == []


def test_enospc_while_writing_the_geopackage(pair, tmp_path, monkeypatch, capsys):
    import pyogrio.errors

    from maskcd.vectorization import ChangesGpkgWriter

    def full(self, batch, *args, **kwargs):
        raise pyogrio.errors.DataSourceError("sqlite3_exec(COMMIT) failed: database or disk is full")

    monkeypatch.setattr(ChangesGpkgWriter, "append", full)  # the streamed writer's batch transaction
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _run(pair, out, capsys)
    assert rc == 2 and len(err) == 1 and "no space left on the device while writing" in err[0], err
    assert list(out.iterdir()) == []


def test_other_os_errors_are_not_disk_full():
    assert is_enospc(OSError(errno.ENOSPC, "No space left on device"))
    assert is_enospc(_chained())
    assert not is_enospc(OSError(errno.EACCES, "Permission denied"))
    assert not is_enospc(ValueError("bad"))


def _chained():
    try:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError as err:
        try:
            raise RuntimeError("write failed") from err
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize("h, w, tile, overlap", [(96, 128, 64, 16), (1000, 700, 256, 64), (50, 50, 64, 0),
                                                  (512, 512, 64, 0)])
def test_tile_store_estimate_counts_every_window(h, w, tile, overlap):
    n = len(grid_windows(h, w, tile, tile - overlap))
    assert estimate_run_bytes(h, w, tile, overlap)["tiles"] == n * tile * tile * 2
