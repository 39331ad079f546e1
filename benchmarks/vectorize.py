"""Benchmark (b) of issue 3: vectorising a 16k x 16k change mask with Dask on 2 workers vs ``gdal_polygonize``.

Run: ``.venv/bin/python benchmarks/vectorize.py [--size 16384] [--workdir DIR]``

1. Writes a seeded, realistic mask (smoothed two-scale noise thresholded to about 3 % change, tiled 512 px, deflate,
   nodata 255) and a matching uint8 probability raster, strip by strip (bounded memory).
2. Runs each method in its own child process and reports wall time, peak RSS (the child and its own children), the
   polygon count and the total polygon area:
   - ``maskcd``: :func:`maskcd.vectorization.vectorize_changes` (4096-px chunks, 2 workers, zonal statistics from
     the probability raster, no min area, no simplification) per Dask scheduler, then :func:`write_changes_gpkg`;
   - ``gdal_polygonize``: GDAL's ``gdal_polygonize.py`` (4-connectivity, ``-mask`` = the mask itself so only value 1
     is polygonised) writing a GeoPackage; when absent, ``osgeo.gdal.Polygonize``; when the bindings are missing too,
     a single-pass ``rasterio.features.shapes`` over the whole mask, labelled as such.
3. Repeats the runs (``--repeat``, alternating methods, default 3) and prints medians: the speed ratio (goal >= 1.5x),
   the CPU-time ratio (less sensitive to other load on a shared machine), the total-area agreement (goal +-0.1 %) and
   the peak RSS.
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


def child_maskcd(mask: Path, prob: Path, out: Path, scheduler: str, workers: int, chunk: int) -> dict:
    import dask.distributed  # noqa: F401  (imported up front, as in a maskcd-map run)
    import geopandas  # noqa: F401

    from maskcd.vectorization import vectorize_changes, write_changes_gpkg

    t0, c0 = time.perf_counter(), _cpu_s()
    gdf = vectorize_changes(mask, prob, min_area_m2=0.0, simplify_m=None, attributes={"run_id": "bench"},
                            chunk_size=chunk, n_workers=workers, scheduler=scheduler)
    t1 = time.perf_counter()
    write_changes_gpkg(gdf, out, metadata={"benchmark": "vectorize"}, overwrite=True)
    t2 = time.perf_counter()
    return dict(vectorise_s=t1 - t0, write_s=t2 - t1, stages=gdf.attrs.get("timings"), cpu_s=_cpu_s() - c0,
                total_s=t2 - t0, n=len(gdf), area=float(gdf.area.sum()),
                valid=bool(gdf.is_valid.all()), types=sorted(set(gdf.geom_type)), peak_rss_mb=_peak_rss_mb())


def child_gdal(mask: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)  # gdal_polygonize.py appends to an existing file
    script = shutil.which("gdal_polygonize.py")
    t0, c0 = time.perf_counter(), _cpu_s()
    if script:
        method = f"gdal_polygonize.py ({script})"
        cmd = [script, "-q", "-mask", str(mask), str(mask), "-f", "GPKG", str(out), "changes", "value"]
        subprocess.run(cmd, check=True)
    elif subprocess.run([DEBIAN_PYTHON, "-c", "from osgeo import gdal"], capture_output=True).returncode == 0:
        method = "osgeo.gdal.Polygonize (Debian python3-gdal)"
        code = (
            "import sys; from osgeo import gdal, ogr; gdal.UseExceptions(); src = gdal.Open(sys.argv[1]); "
            "b = src.GetRasterBand(1); drv = ogr.GetDriverByName('GPKG'); ds = drv.CreateDataSource(sys.argv[2]); "
            "lyr = ds.CreateLayer('changes', srs=src.GetSpatialRef(), geom_type=ogr.wkbPolygon); "
            "lyr.CreateField(ogr.FieldDefn('value', ogr.OFTInteger)); gdal.Polygonize(b, b, lyr, 0, []); ds = None"
        )
        subprocess.run([DEBIAN_PYTHON, "-c", code, str(mask), str(out)], check=True)
    else:
        method = "single-pass rasterio.features.shapes over the whole mask (no GDAL bindings found)"
        import geopandas as gpd
        import rasterio
        import shapely
        from rasterio import features

        with rasterio.open(mask) as src:
            data, transform, crs = src.read(1), src.transform, src.crs
        geoms = [shapely.geometry.shape(g) for g, v in
                 features.shapes(data, mask=data == 1, connectivity=4, transform=transform)]
        gpd.GeoDataFrame({"value": np.ones(len(geoms), np.int32)}, geometry=geoms, crs=crs).to_file(out)
    t1, cpu = time.perf_counter(), _cpu_s() - c0
    import pyogrio

    gdf = pyogrio.read_dataframe(out, columns=["value"])
    if "value" in gdf:
        gdf = gdf[gdf["value"] == 1]
    return dict(method=method, total_s=t1 - t0, cpu_s=cpu, n=len(gdf), area=float(gdf.area.sum()),
                valid=bool(gdf.is_valid.all()),
                peak_rss_mb=_peak_rss_mb())


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
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--schedulers", default="threads,processes,distributed")
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
        print(json.dumps(child_maskcd(a.mask, a.prob, a.out, a.scheduler, a.workers, a.chunk)))
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
        print(f"[{rep + 1}/{a.repeat}] gdal       [{g['method']}]: {g['total_s']:.1f} s (CPU {g['cpu_s']:.1f} s), "
              f"{g['n']} polygons, area {g['area']:.1f} m², valid {g['valid']}, peak RSS {g['peak_rss_mb']:.0f} MB")
        for sched in runs:
            r = _run_child(["--child", "maskcd", "--mask", str(mask), "--prob", str(prob), "--out",
                            str(work / f"maskcd_{sched}.gpkg"), "--scheduler", sched, "--workers", str(a.workers),
                            "--chunk", str(a.chunk)])
            runs[sched].append(r)
            print(f"[{rep + 1}/{a.repeat}] maskcd     [dask {sched}, {a.workers} workers, {a.chunk}-px chunks]: "
                  f"vectorise {r['vectorise_s']:.1f} s + GeoPackage {r['write_s']:.1f} s = {r['total_s']:.1f} s "
                  f"(CPU {r['cpu_s']:.1f} s), {r['n']} polygons, area {r['area']:.1f} m², "
                  f"valid {r['valid']}, types {r['types']}, peak RSS {r['peak_rss_mb']:.0f} MB; stages "
                  + ", ".join(f"{k} {v:.1f}" for k, v in (r["stages"] or {}).items()))

    def med(rs, key):
        return float(np.median([x[key] for x in rs]))

    best = min(runs, key=lambda k: med(runs[k], "total_s"))
    r, gdal = runs[best][-1], gdal_runs[-1]
    g_t, m_t, m_v = med(gdal_runs, "total_s"), med(runs[best], "total_s"), med(runs[best], "vectorise_s")
    ratio = g_t / m_t
    agree = (r["area"] - gdal["area"]) / gdal["area"] * 100
    print(f"median over {a.repeat} runs: gdal {g_t:.1f} s (CPU {med(gdal_runs, 'cpu_s'):.1f} s); "
          + "; ".join(f"maskcd {k} {med(v, 'total_s'):.1f} s (CPU {med(v, 'cpu_s'):.1f} s)" for k, v in runs.items()))
    print(f"fastest scheduler (median): {best}")
    print(f"speed ratio gdal / maskcd (both ending in a GeoPackage, medians): {ratio:.2f}x "
          f"(goal >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}); vectorise only: {g_t / m_v:.2f}x; "
          f"CPU-time ratio {med(gdal_runs, 'cpu_s') / med(runs[best], 'cpu_s'):.2f}x")
    print(f"total area: maskcd {r['area']:.1f} m² vs gdal {gdal['area']:.1f} m²: {agree:+.4f} % "
          f"(goal +-0.1 %: {'met' if abs(agree) <= 0.1 else 'NOT met'}); polygons {r['n']} vs {gdal['n']}")
    print(f"peak RSS: maskcd {max(x['peak_rss_mb'] for x in runs[best]):.0f} MB, "
          f"gdal {max(x['peak_rss_mb'] for x in gdal_runs):.0f} MB")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
