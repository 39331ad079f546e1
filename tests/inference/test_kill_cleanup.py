"""Failures that clean up after themselves: a ``maskcd-map`` killed with SIGKILL while it writes tiles leaves no live
process behind, and the next run in the same folder removes its leftovers and writes valid outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskcd.inference.cleanup import LOCK_PREFIX, RunLock, sweep_dead_runs

from tests.conftest import HANG_TIMEOUT_S

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _procs() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, process group, state) of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def _descendants(pid: int) -> set[int]:
    procs = _procs()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, (ppid, _, _) in procs.items():
            if ppid == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids, pgid: int) -> list[int]:
    """Members of ``pids`` or of process group ``pgid`` that are still running (zombies count as dead)."""
    return [p for p, (_, g, state) in _procs().items() if (p in pids or g == pgid) and state != "Z"]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sigkill_mid_tiling_leaves_no_process_and_the_next_run_cleans_up(tmp_path, geotiff_writer):
    """Windows of 320² px: each item's validity mask (100 KB, pickled through the worker's pipe, unlike the tensors
    that go through shared memory) overflows the 64 KB pipe, so after the kill the workers' queue feeders stay blocked
    and, without a parent-death signal, the workers would hang at exit forever (the orphans of the issue)."""
    rng = np.random.default_rng(5)
    h, w = 640, 960
    a = np.kron(rng.integers(20, 220, (3, h // 8, w // 8), dtype=np.uint8), np.ones((1, 8, 8), np.uint8))
    b = a.copy()
    b[:, 100:220, 150:330] = 250
    geotiff_writer(tmp_path / "before.tif", a)
    geotiff_writer(tmp_path / "after.tif", b)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "maskcd.cli.map", str(tmp_path / "before.tif"), str(tmp_path / "after.tif"),
           "-o", str(out / "changes.gpkg"), "--model", "fc-ef", "--tile", "320", "--overlap", "0", "--batch-size", "1",
           "--device", "cpu", "--workers", "2", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # wait until it writes tiles: the hidden store exists, holds data, and the DataLoader workers run
    deadline = time.monotonic() + HANG_TIMEOUT_S
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        stores = list(out.glob("..changes_change_prob.tif.*.maskcd-tiles/tiles.f16"))
        if stores and stores[0].exists() and stores[0].stat().st_blocks > 0:
            workers = _descendants(proc.pid)
            if len(workers) >= 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert len(workers) >= 2, "no DataLoader workers seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    leftovers = _hidden(out)
    assert any(name.endswith(".maskcd-tiles") for name in leftovers), leftovers
    assert any(name.startswith(LOCK_PREFIX) for name in leftovers), leftovers

    # every process of the killed run is gone within 10 s (its readers die with their parent)
    t0 = time.monotonic()
    while _alive(workers, proc.pid) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    survivors = _alive(workers, proc.pid)
    for pid in survivors:  # do not leave them running when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes of the killed run still alive 10 s later: {survivors}"

    # the next run in the same folder removes the leftovers and writes valid outputs
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "leftover" in rerun.stderr and ".maskcd-tiles" in rerun.stderr
    assert _hidden(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["changes.gpkg", "changes_change_mask.tif",
                                                     "changes_change_prob.tif"]
    import pyogrio
    import rasterio

    with rasterio.open(out / "changes_change_mask.tif") as ds:
        mask = ds.read(1)
        assert ds.shape == (h, w) and ds.crs is not None
    assert set(np.unique(mask)) <= {0, 1}
    assert pyogrio.read_info(out / "changes.gpkg", layer="changes")["features"] >= 0
    assert "geometry" in pyogrio.read_dataframe(out / "changes.gpkg", layer="changes").columns


def test_sweep_removes_only_what_dead_runs_left(tmp_path):
    dead, live = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
    (tmp_path / f"{LOCK_PREFIX}{dead}.lock").write_text("999999999 " + dead)  # nobody holds it
    # what a run reserves (maskcd.io.atomic temporaries tagged with its run id) and what is named after them: the
    # tile store, the stitcher's scratch GeoTIFF, a GeoPackage journal; then a temporary that names no run
    names = [f".o_change_prob.tif.{dead}.tmp.tif", f"..o_change_prob.tif.{dead}.tmp.tif.maskcd-tiles",
             f".o_change_prob.tif.{dead}.tmp.tif.tiles.tif", f".o.gpkg.{dead}.tmp.gpkg-journal",
             f".o_change_prob.tif.{live}.tmp.tif", f"..o_change_prob.tif.{live}.tmp.tif.maskcd-tiles",
             ".o.gpkg.1234abcd5678.tmp.gpkg", ".keep-me", "o.gpkg"]
    for name in names:
        if name.endswith("maskcd-tiles"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "tiles.f16").write_bytes(b"\0" * 16)
        else:
            (tmp_path / name).write_bytes(b"x")
    with RunLock([tmp_path], live):
        removed = {p.name for p in sweep_dead_runs(tmp_path)}
        assert removed == {f"{LOCK_PREFIX}{dead}.lock", *names[:4]}
        # with a live run in the folder, a temporary GeoPackage that names no run may be that run's: kept
        assert (tmp_path / ".o.gpkg.1234abcd5678.tmp.gpkg").exists()
    assert not (tmp_path / f"{LOCK_PREFIX}{live}.lock").exists()  # released and removed on exit
    removed = {p.name for p in sweep_dead_runs(tmp_path)}
    assert removed == {f".o_change_prob.tif.{live}.tmp.tif", f"..o_change_prob.tif.{live}.tmp.tif.maskcd-tiles",
                       ".o.gpkg.1234abcd5678.tmp.gpkg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep-me", "o.gpkg"]


def test_a_live_lock_held_by_another_process_is_respected(tmp_path):
    run = "cccccccccccc"
    script = (f"import sys, time; from maskcd.inference.cleanup import RunLock\n"
              f"with RunLock([{str(tmp_path)!r}], {run!r}):\n    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / f"..x.tif.{run}.tmp.tif.maskcd-tiles").mkdir()
        assert sweep_dead_runs(tmp_path) == []
        holder.kill()
        holder.wait()
        assert {p.name for p in sweep_dead_runs(tmp_path)} == {f"..x.tif.{run}.tmp.tif.maskcd-tiles",
                                                               f"{LOCK_PREFIX}{run}.lock"}
    finally:
        holder.kill()
        holder.stdout.close()


VECTORIZE_CHILD = r"""
import os, sys, time
import numpy as np
import rasterio
from rasterio.transform import from_origin
from maskcd.vectorization import iter_changes
from maskcd.vectorization import polygonize as mod

folder = sys.argv[1]
mask = np.zeros((64, 64), np.uint8)
mask[5:20, 5:20] = 1
path = os.path.join(folder, "mask.tif")
with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", nodata=255,
                   crs="EPSG:32633", transform=from_origin(500000, 5100000, 1, 1)) as dst:
    dst.write(mask, 1)
real = mod.polygonize_chunk

def stuck(*args):  # every chunk task reports its worker's pid, then blocks
    with open(os.path.join(folder, f"worker.{os.getpid()}"), "w"):
        pass
    time.sleep(600)
    return real(*args)

mod.polygonize_chunk = stuck
list(iter_changes(path, None, min_area_m2=0, simplify_m=None, attributes={}, chunk_size=16, n_workers=2,
                  scheduler="processes"))
"""


def test_vectorize_worker_processes_die_with_a_killed_run(tmp_path):
    """``iter_changes(scheduler="processes")``: its pool's workers, busy in a chunk task, exit within 10 s of a SIGKILL
    of the process that started them (they would otherwise sleep on, re-parented to init)."""
    child = subprocess.Popen([sys.executable, "-c", VECTORIZE_CHILD, str(tmp_path)], start_new_session=True,
                             cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while len(list(tmp_path.glob("worker.*"))) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    workers = {int(p.suffix[1:]) for p in tmp_path.glob("worker.*")}
    assert len(workers) == 2, f"workers did not start (exit code {child.poll()})"
    assert workers <= _descendants(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while _alive(workers, -1) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(workers, -1)
    for pid in left:  # do not leave them behind for the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"vectorize workers {left} outlived their parent by 10 s"
