"""Benchmark (b) of issue 3: a 16k x 16k change mask to a GeoPackage, maskcd (Dask, 2 workers) vs GDAL's polygonize.

Run: ``.venv/bin/python benchmarks/vectorize.py [--size 16384] [--workdir DIR] [--repeat 3]``

1. Writes a seeded, realistic mask (smoothed two-scale noise thresholded to about 3 % change, tiled 512 px, deflate,
   nodata 255) and a matching uint8 probability raster, strip by strip (bounded memory).
2. Runs each method in its own child process. Like with like: both end in a GeoPackage on the same disk, and both
   timers start at the same point, in the child after its imports, and stop once the GeoPackage is closed:
   - ``maskcd``: exactly ``maskcd-map``'s stage 5-6 path: :func:`maskcd.vectorization.iter_changes` (2048-px chunks,
     2 workers, zonal statistics from the probability raster, no min area, no simplification) streamed into a
     :class:`maskcd.vectorization.ChangesGpkgWriter` (layer with R-tree, style row, run_metadata);
   - ``gdal``: what ``gdal_polygonize.py -mask MASK MASK -f GPKG OUT changes value`` does (GDAL 3.6: a GPKG layer,
     ``gdal.Polygonize`` with 4-connectivity and the mask itself as mask band, so only value 1 is polygonised), run
     with Debian's ``python3-gdal`` so that the timer can start after ``from osgeo import gdal, ogr``; without those
     bindings, the ``gdal_polygonize.py`` process itself, timed from its start (the report says so).
   The import times are printed, not counted.
3. Repeats the runs (``--repeat``, alternating methods, default 3) and prints the medians (wall and CPU time of the
   timed part, and the load average: on a shared machine the wall times mostly measure the wait for a core) and one
   figure: the end-to-end speed ratio gdal / maskcd (goal >= 1.5x on 2 cores), with the polygon counts (goal: equal)
   and the total polygon area (goal: within +-0.1 %).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T_START = time.perf_counter()  # a child's process start (before its imports), for the import time it reports
REPO = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = "/usr/bin/python3"


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def make_scene(folder: Path, size: int, seed: int = 7, change: float = 0.03) -> tuple[Path, Path]:
    """Write ``mask.tif`` and ``prob.tif`` (size x size, UTM 33N, 0.5 m) from smoothed noise at two scales."""
    import rasterio
    from rasterio.transform import from_origin
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse_f, fine_f = 16, 4
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // coarse_f + 2,) * 2).astype(np.float32), 4.0)
    fine = ndimage.gaussian_filter(rng.standard_normal((size // fine_f + 2,) * 2).astype(np.float32), 2.0)
    coarse /= coarse.std()
    fine /= fine.std()
    strip = 512

    def field(r0: int, r1: int) -> np.ndarray:
        rows = np.arange(r0, r1, dtype=np.float32)[:, None]
        cols = np.arange(size, dtype=np.float32)[None, :]
        out = ndimage.map_coordinates(coarse, [np.broadcast_to(rows / coarse_f, (r1 - r0, size)),
                                               np.broadcast_to(cols / coarse_f, (r1 - r0, size))], order=1)
        out += 0.35 * ndimage.map_coordinates(fine, [np.broadcast_to(rows / fine_f, (r1 - r0, size)),
                                                     np.broadcast_to(cols / fine_f, (r1 - r0, size))], order=1)
        return out

    sample = np.concatenate([field(r, r + 1).ravel() for r in rng.integers(0, size, 64)])
    thr = float(np.quantile(sample, 1 - change))
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=255, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", crs="EPSG:32633",
                   transform=from_origin(500000.0, 5100000.0, 0.5, 0.5), BIGTIFF="IF_SAFER")
    mpath, ppath = folder / "mask.tif", folder / "prob.tif"
    with rasterio.open(mpath, "w", **profile) as m, rasterio.open(ppath, "w", **profile) as p:
        for r0 in range(0, size, strip):
            r1 = min(size, r0 + strip)
            f = field(r0, r1)
            win = rasterio.windows.Window(0, r0, size, r1 - r0)
            m.write((f > thr).astype(np.uint8), 1, window=win)
            prob = 1.0 / (1.0 + np.exp(-3.0 * (f - thr)))
            p.write(np.clip(np.rint(prob * 254), 0, 254).astype(np.uint8), 1, window=win)
    return mpath, ppath


def child_maskcd(mask: Path, prob: Path, out: Path, scheduler: str, workers: int, chunk: int | None,
                 t_start: float) -> dict:
    import dask.distributed  # noqa: F401  (imported up front, as in a maskcd-map run)
    import geopandas  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401  (what the chunk tasks import lazily: an import, not vectorising)
    import scipy.ndimage  # noqa: F401

    from maskcd.vectorization import ChangesGpkgWriter, iter_changes
    from maskcd.vectorization.polygonize import DEFAULT_CHUNK

    out.unlink(missing_ok=True)
    t0, c0 = time.perf_counter(), _cpu_s()
    stats: dict = {}
    writer = ChangesGpkgWriter(out, overwrite=True)
    for batch in iter_changes(mask, prob, min_area_m2=0.0, simplify_m=None, attributes={"run_id": "bench"},
                              chunk_size=chunk or DEFAULT_CHUNK, n_workers=workers, scheduler=scheduler, stats=stats):
        writer.append(batch)
    summary = writer.close({"benchmark": "vectorize"})
    t1 = time.perf_counter()
    return dict(chunk=stats["chunks"]["size"], total_s=t1 - t0, imports_s=t0 - t_start, cpu_s=_cpu_s() - c0,
                stages={**stats["timings"], "gpkg_s": summary.write_s}, peak_rss_mb=_peak_rss_mb(),
                **_read_back(out, "changes"))


def _read_back(path: Path, layer: str) -> dict:
    import pyogrio

    gdf = pyogrio.read_dataframe(path, layer=layer)
    if "value" in gdf:
        gdf = gdf[gdf["value"] == 1]
    return dict(n=len(gdf), area=float(gdf.area.sum()), valid=bool(gdf.is_valid.all()),
                types=sorted(set(gdf.geom_type)))


# gdal_polygonize.py (GDAL 3.6) for "-mask MASK MASK -f GPKG OUT changes value", timed after its imports
GDAL_CODE = """
import json, resource, sys, time
t_start = time.perf_counter()
from osgeo import gdal, ogr
gdal.UseExceptions()
t0 = time.perf_counter()
ru0 = resource.getrusage(resource.RUSAGE_SELF)
src = gdal.Open(sys.argv[1])
band = src.GetRasterBand(1)
mask_ds = gdal.Open(sys.argv[1])  # kept referenced: a band outlives no dataset
mask = mask_ds.GetRasterBand(1)
ds = ogr.GetDriverByName("GPKG").CreateDataSource(sys.argv[2])
layer = ds.CreateLayer("changes", geom_type=ogr.wkbPolygon, srs=src.GetSpatialRef())
layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
gdal.Polygonize(band, mask, layer, 0, [], callback=None)
layer = ds = None  # closes the GeoPackage
band = mask = src = mask_ds = None
t1 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"total_s": t1 - t0, "imports_s": t0 - t_start,
                  "cpu_s": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
                  "peak_rss_mb": ru.ru_maxrss / 1024}))
"""


def child_gdal(mask: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)
    if subprocess.run([DEBIAN_PYTHON, "-c", "from osgeo import gdal"], capture_output=True).returncode == 0:
        method = "gdal.Polygonize as gdal_polygonize.py calls it (Debian python3-gdal), timed after imports"
        res = subprocess.run([DEBIAN_PYTHON, "-c", GDAL_CODE, str(mask), str(out)], check=True, capture_output=True,
                             text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
    elif shutil.which("gdal_polygonize.py"):
        method = "gdal_polygonize.py process, timed from its start (no python3-gdal to time after imports)"
        t0, c0 = time.perf_counter(), _cpu_s()
        subprocess.run([shutil.which("gdal_polygonize.py"), "-q", "-mask", str(mask), str(mask), "-f", "GPKG",
                        str(out), "changes", "value"], check=True)
        r = dict(total_s=time.perf_counter() - t0, imports_s=0.0, cpu_s=_cpu_s() - c0, peak_rss_mb=_peak_rss_mb())
    else:
        raise SystemExit("neither Debian's python3-gdal nor gdal_polygonize.py is installed: nothing to compare with")
    return dict(method=method, **r, **_read_back(out, "changes"))


def _run_child(args: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=None, help="chunk side (default: the library's, DEFAULT_CHUNK)")
    ap.add_argument("--schedulers", default="threads", help="comma-separated: threads,processes,distributed")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions; medians are reported")
    ap.add_argument("--reuse", action="store_true", help="reuse mask.tif/prob.tif already in --workdir")
    ap.add_argument("--child", choices=["maskcd", "gdal"], help=argparse.SUPPRESS)
    ap.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prob", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scheduler", default="threads", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child == "maskcd":
        print(json.dumps(child_maskcd(a.mask, a.prob, a.out, a.scheduler, a.workers, a.chunk, T_START)))
        return 0
    if a.child == "gdal":
        print(json.dumps(child_gdal(a.mask, a.out)))
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="maskcd_bench_vec_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.reuse and (work / "mask.tif").is_file() and (work / "prob.tif").is_file():
        mask, prob = work / "mask.tif", work / "prob.tif"
    else:
        mask, prob = make_scene(work, a.size)
    print(f"scene: {a.size} x {a.size} mask + probability ready in {time.perf_counter() - t0:.1f} s "
          f"({mask.stat().st_size / 1e6:.1f} + {prob.stat().st_size / 1e6:.1f} MB) in {work}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")
    gdal_runs, runs = [], {sched: [] for sched in a.schedulers.split(",")}
    for rep in range(a.repeat):  # alternate the methods so that load changes hit all of them alike
        g = _run_child(["--child", "gdal", "--mask", str(mask), "--out", str(work / "gdal.gpkg")])
        gdal_runs.append(g)
        print(f"[{rep + 1}/{a.repeat}] gdal   [{g['method']}]: {g['total_s']:.1f} s (imports {g['imports_s']:.1f} s "
              f"not counted; CPU {g['cpu_s']:.1f} s), {g['n']} polygons, area {g['area']:.1f} m², valid {g['valid']}, "
              f"peak RSS {g['peak_rss_mb']:.0f} MB", flush=True)
        for sched in runs:
            r = _run_child(["--child", "maskcd", "--mask", str(mask), "--prob", str(prob), "--out",
                            str(work / f"maskcd_{sched}.gpkg"), "--scheduler", sched, "--workers", str(a.workers),
                            *(["--chunk", str(a.chunk)] if a.chunk else [])])
            runs[sched].append(r)
            print(f"[{rep + 1}/{a.repeat}] maskcd [dask {sched}, {a.workers} workers, {r['chunk']}-px chunks, streamed "
                  f"into the GeoPackage]: {r['total_s']:.1f} s (imports {r['imports_s']:.1f} s not counted; CPU "
                  f"{r['cpu_s']:.1f} s; stages " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
                  + f"), {r['n']} polygons, area {r['area']:.1f} m², valid {r['valid']}, types {r['types']}, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    def med(rs, key):
        return float(np.median([x[key] for x in rs]))

    best = min(runs, key=lambda k: med(runs[k], "total_s"))
    r, gdal = runs[best][-1], gdal_runs[-1]
    g_t, m_t = med(gdal_runs, "total_s"), med(runs[best], "total_s")
    ratio = g_t / m_t
    agree = (r["area"] - gdal["area"]) / gdal["area"] * 100
    print(f"median over {a.repeat} runs, mask -> GeoPackage, timed after imports: gdal {g_t:.1f} s (CPU "
          f"{med(gdal_runs, 'cpu_s'):.1f} s); "
          + "; ".join(f"maskcd {k} {med(v, 'total_s'):.1f} s (CPU {med(v, 'cpu_s'):.1f} s)" for k, v in runs.items())
          + f"; load average now {os.getloadavg()[0]:.1f}")
    print(f"end-to-end speed ratio gdal / maskcd ({best}): {ratio:.2f}x (goal >= 1.5x: "
          f"{'met' if ratio >= 1.5 else 'NOT met'}); polygons {r['n']} vs {gdal['n']} "
          f"({'same' if r['n'] == gdal['n'] else 'DIFFERENT'}); total area {agree:+.4f} % "
          f"(goal +-0.1 %: {'met' if abs(agree) <= 0.1 else 'NOT met'})")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
