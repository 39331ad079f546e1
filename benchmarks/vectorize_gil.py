"""How much of a vectorisation chunk task holds the GIL (issue 15, ``benchmarks/vectorize.py``'s 2-thread ratio).

Run: ``.venv/bin/python benchmarks/vectorize_gil.py [--size 8192] [--workdir DIR]``

``iter_changes`` runs its chunk tasks (:func:`maskcd.vectorization.polygonize.polygonize_chunk`) two at a time in
threads, so its speed-up over GDAL's single-threaded polygonize on 2 cores depends on those tasks releasing the GIL.
For each operation below, a worker thread runs it 6 times while the main thread spins in pure Python; both threads'
CPU times (``time.thread_time``) are printed. The spinner only runs while the worker does not hold the GIL, so the
ratio spinner / worker is near or above 1 for an operation that releases the GIL (``np.sort``, the control) and far
below 1 for one that holds it. On a loaded machine both threads also wait for cores; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="scene side (chunks of 2048 px: the middle one is used)")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args(argv)

    import rasterio
    from rasterio import features
    from rasterio.windows import Window
    from scipy import ndimage

    from benchmarks.vectorize import make_scene
    from maskcd.vectorization.outline import label_components, trace_outlines
    from maskcd.vectorization.polygonize import DEFAULT_CHUNK, polygonize_chunk

    work = Path(a.workdir or tempfile.mkdtemp(prefix="maskcd_bench_gil_"))
    work.mkdir(parents=True, exist_ok=True)
    mask, prob = (work / "mask.tif", work / "prob.tif")
    if not (mask.is_file() and prob.is_file()):
        mask, prob = make_scene(work, a.size)
    c = DEFAULT_CHUNK
    win = Window(c, c, c, c)
    with rasterio.open(mask) as src:
        change = src.read(1, window=win) == 1
    labels, _ = ndimage.label(change)
    flat = np.flatnonzero(change).astype(np.int32)
    numbers, _ = label_components(change, flat)
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)

    def read_prob():
        with rasterio.open(prob) as src:
            src.read(1, window=win)

    ops = {
        "np.sort of 2e6 floats (releases the GIL: control)": lambda: np.sort(np.random.default_rng(0).random(2_000_000)),
        f"polygonize_chunk ({c}² chunk, as iter_changes runs it)":
            lambda: polygonize_chunk(str(mask), str(prob), (1, 1), win, (a.size, a.size), 0),
        f"label_components ({c}², as the task runs it)": lambda: label_components(change, flat),
        f"trace_outlines ({c}², as the task runs it)": lambda: trace_outlines(change, flat, numbers),
        f"scipy.ndimage.label ({c}²)": lambda: ndimage.label(change),
        f"probability window read ({c}²)": read_prob,
        f"rasterio.features.shapes on the whole {c}² label image (not what we run)":
            lambda: list(features.shapes(labels, mask=labels > 0, connectivity=4)),
    }
    print(f"{a.size}² scene in {work}, chunk {c}², {change.mean() * 100:.1f} % change in it")
    for name, op in ops.items():
        out = {}

        def work_thread():
            t0 = time.thread_time()
            for _ in range(6):
                op()
            out["cpu"] = time.thread_time() - t0

        th = threading.Thread(target=work_thread)
        t0 = time.thread_time()
        th.start()
        while th.is_alive():
            pass
        spin = time.thread_time() - t0
        th.join()
        print(f"{name:75s} worker CPU {out['cpu']:6.3f} s  spinner CPU {spin:6.3f} s  ratio {spin / out['cpu']:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
