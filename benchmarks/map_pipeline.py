"""Benchmark of ``maskcd-map`` (issue 3): pipeline overhead over the bare model, and memory vs scene size.

Run: ``.venv/bin/python benchmarks/map_pipeline.py`` (CPU, Swin-T MaskCD, 1024² scene, RSS at 2k/8k/16k), or on a GPU:
``.venv/bin/python benchmarks/map_pipeline.py --device cuda --preset maskcd-swin-b --bf16 --size 4096``.

(a) ``map_scene`` wall time (align + shift estimate + tiling + DataLoader reads + inference + Dask blend/stitch + COGs
    + vectorise + GeoPackage; the model is loaded beforehand and passed in) divided by the bare batched forward pass
    over the *same* windows, pre-read into memory (goal ≤ 1.15). Also pairs/s and MP/s of the forward.
(b) Vectorising a 16k² mask with Dask vs ``gdal_polygonize``: ``benchmarks/vectorize.py`` (issue 3b), run with
    ``--vectorize``.
(d) Co-registration (issue 13): ``map_scene`` with ``--coregister off``, ``global`` and ``local`` on one seeded
    synthetic pair without built-in misregistration (``--coreg-size``, default 2048², ``--preset``, default Swin-T
    MaskCD, run with ``--coreg``) whose
    after image's geotransform is moved by ``--coreg-shift`` px (default 1.3, 0.7), so that both modes estimate *and
    apply* a correction. The modes run interleaved (``--coreg-repeats`` rounds, the order rotated each round) with the
    same model object and inputs; prints each run's wall time, the ``coregister`` stage time and its share of the
    ``off`` run's wall time, and the wall-time difference against ``off`` (goals: global ≤ 5 %, local ≤ 15 %).
(e) Peak RSS of the co-registration modes in scene size (run with ``--coreg-rss``): a whole ``map_scene`` per mode
    (``--coreg-rss-modes``, default off, global, local) and scene size (``--coreg-rss-sizes``, default 2048², 8192²),
    each in a child process under ``/usr/bin/time -v`` (its "Maximum resident set size", the largest of the child
    and its reaped DataLoader workers; the child's ``VmHWM`` and sampled PSS sum too), on the VRT mosaics and the
    pixel-difference model of part (c), with the after mosaic's geotransform moved by ``--coreg-shift`` px so that
    the correction is applied while the after image is read.
(c) Peak RSS of a whole ``map_scene`` run at 2k, 8k and 16k square scenes, each in its own child process, read from
    ``/proc``: the child's ``VmHWM`` and the sampled PSS sum over the child and its DataLoader workers.
    (``getrusage`` is not used: ``ru_maxrss`` carries the parent's peak across fork + exec, and a forked worker's
    ``ru_maxrss`` counts pages shared with the parent.) The scenes are GDAL VRT mosaics of one seeded
    2048² synthetic pair (no 16k² file on disk); the model is a fast pixel-difference model (local mean of
    ``|after - before|``), because this part measures the pipeline's memory, not the model. Goal: flat and < 3 GB.
(c2) Peak RSS of the vectorise-and-write stage alone (exactly what ``map_scene`` runs after the COGs: the streaming
    :func:`maskcd.vectorization.iter_changes` into a :class:`~maskcd.vectorization.ChangesGpkgWriter`, one-pixel
    simplification, min area 25 m²) on noise-like probability rasters of 2k² and 16k² (Gaussian-filtered white noise,
    sigma 3 px, thresholded at p = 0.5 for about 16 % change: about 2,000 polygons per 2048² and about 10⁵ at 16k²), each
    in a child process under ``/usr/bin/time -v`` (its "Maximum resident set size"; the child's ``VmHWM`` too). The
    full model run is too slow on the shared 2-core machine at 16k², so the rasters are fed straight to the stage,
    as ``map_scene`` does with its own COGs. Goal: peak at 16k² within 1.1x of the 2k² peak. ``--holding`` adds the
    old whole-frame path (:func:`vectorize_changes` + :func:`write_changes_gpkg`) for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from maskcd.models.base import ChangeDetectionOutput, InferenceSpec  # noqa: E402


class PixelDiffModel(torch.nn.Module):
    """Fast stand-in for memory measurements: p = clip(avgpool5(mean_c |b - a|) · gain, 0, 1)."""

    def __init__(self, tile: int, gain: float = 3.0):
        super().__init__()
        self.gain = gain
        self.config = SimpleNamespace(_name_or_path="")
        self.spec = InferenceSpec(tile_size=tile)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def inference_spec(self) -> InferenceSpec:
        return self.spec

    def forward(self, image_a, image_b, labels=None):
        d = (image_b - image_a).abs().mean(1, keepdim=True)
        d = torch.nn.functional.avg_pool2d(d, 5, stride=1, padding=2)
        return ChangeDetectionOutput(change_prob=(d[:, 0] * self.gain / 4.0).clamp(0, 1))


def _vm_hwm_mb() -> float:
    """Peak RSS of this process's own address space (``VmHWM``; unlike ``ru_maxrss`` it does not inherit the
    parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Samples the summed PSS and RSS of this process and all its descendants (DataLoader workers) every ``period``.

    PSS splits pages shared between the main process and its forked workers, so the PSS sum is the real footprint;
    the RSS sum counts shared pages once per process (an upper bound).
    """

    def __init__(self, period: float = 0.25):
        import threading

        import psutil

        self.proc = psutil.Process()
        self.period = period
        self.peak_pss = self.peak_rss = 0.0
        self.peak_workers = 0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        pss = rss = 0
        procs = [self.proc, *self.proc.children(recursive=True)]
        for p in procs:
            try:
                info = p.memory_full_info()
                pss += info.pss
                rss += info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.samples.append((time.perf_counter(), pss / 2**20))
        self.peak_pss = max(self.peak_pss, pss / 2**20)
        self.peak_rss = max(self.peak_rss, rss / 2**20)
        self.peak_workers = max(self.peak_workers, len(procs) - 1)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def stage_peaks(self, t0: float, timings: dict) -> dict:
        """Peak PSS (MB) per pipeline stage, from the stage durations in order after ``t0``."""
        out, start = {}, t0
        for key in ("load_model_s", "align_s", "coregister_s", "infer_s", "stitch_s", "vectorize_s", "write_s"):
            end = start + timings.get(key, 0.0)
            vals = [m for t, m in self.samples if start <= t <= end + self.period]
            if vals:
                out[key[:-2]] = round(max(vals))
            start = end
        return out

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, pair, windows, tile: int, batch_size: int, device: torch.device, bf16: bool) -> float:
    """Seconds of the batched forward over ``windows`` read beforehand (same normalisation and padding)."""
    from maskcd.inference.dataset import WindowDataset, collate_windows

    ds = WindowDataset(pair, windows, tile)
    kept = [j for j in range(len(ds)) if ds[j][1]]  # the pipeline skips windows with < 5 % valid data too
    batches = [collate_windows([ds[j] for j in kept[i : i + batch_size]]) for i in range(0, len(kept), batch_size)]
    batches = [(b["image_a"].to(device), b["image_b"].to(device)) for b in batches]
    spec = pair.spec
    ac = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 and device.type == "cuda" else None
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        outs = []
        for a, b in batches:
            a, b = spec.normalize(a), spec.normalize(b)  # as the pipeline does, after device placement
            if ac is not None:
                with ac:
                    outs.append(model(a, b).change_prob)
            else:
                outs.append(model(a, b).change_prob)
        _sync(device)
        _ = [o.float().cpu() for o in outs]
    return time.perf_counter() - t


def part_a(args, work: Path) -> None:
    from maskcd.data.synthetic import make_scene_pair
    from maskcd.inference import MapOptions, map_scene
    from maskcd.inference.tiling import grid_windows, resolve_overlap
    from maskcd.io import align_pair
    from maskcd.models import build_model

    scene = make_scene_pair(work / "a", seed=31, size=args.size)
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    device = torch.device(args.device if args.device.startswith("cuda") else "cpu")
    if device.type == "cuda" and not args.bf16:
        print("    note: map_scene always runs bf16 autocast on CUDA; the bare forward uses it too")
        args.bf16 = True
    model.to(device)
    spec = model.inference_spec
    tile = args.tile or spec.tile_size
    opts = MapOptions(model=args.preset, tile=tile, overlap=args.overlap, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, overwrite=True)
    # warm-up (kernels, allocator) so that neither measurement pays it
    with torch.inference_mode():
        x = torch.zeros(args.batch_size, spec.num_bands, tile, tile, device=device)
        if args.bf16 and device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(x, x)
        else:
            model(x, x)
    _sync(device)

    pair = align_pair(scene["before"], scene["after"], spec)
    overlap = resolve_overlap(tile, args.overlap)
    windows = grid_windows(pair.grid.height, pair.grid.width, tile, tile - overlap)
    print(f"(a) {args.preset} on {args.device}{' bf16' if args.bf16 else ''}: {args.size}² synthetic scene, tile {tile}, "
          f"overlap {overlap} px, batch {args.batch_size}, {len(windows)} windows, {args.workers} reader worker(s), "
          f"{torch.get_num_threads()} torch threads")
    # interleaved repeats, best of each: the machine may be shared, so single timings are noisy
    bares, maps = [bare_forward(model, pair, windows, tile, args.batch_size, device, args.bf16)], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = map_scene(scene["before"], scene["after"], work / "a" / "out.gpkg", opts, model=model, progress=False)
        maps.append(time.perf_counter() - t)
        bares.append(bare_forward(model, pair, windows, tile, args.batch_size, device, args.bf16))
    t_ref, t_map = min(bares), min(maps)
    stages = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in res.timings.items() if k.endswith("_s") and k != "total_s")
    print(f"    bare batched forward: {', '.join(f'{v:.2f}' for v in bares)} s (best {t_ref:.2f}) "
          f"= {len(windows) / t_ref:.2f} pairs/s, {len(windows) * tile * tile / 1e6 / t_ref:.2f} MP/s of windows")
    print(f"    maskcd-map (map_scene): {', '.join(f'{v:.2f}' for v in maps)} s (best {t_map:.2f}; last run [{stages}]), "
          f"{res.n_polygons} polygons")
    print(f"    ratio map / bare forward = {t_map / t_ref:.3f} (goal <= 1.15: {'met' if t_map / t_ref <= 1.15 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset, "device": args.device, "bf16": args.bf16, "size": args.size, "tile": tile,
            "windows": len(windows), "bare_forward_s": t_ref, "map_s": t_map, "map_over_forward": t_map / t_ref,
            "forward_pairs_per_s": len(windows) / t_ref, "forward_mp_per_s": len(windows) * tile * tile / 1e6 / t_ref,
            "map_scene_mp_per_s": args.size**2 / 1e6 / t_map, "n_polygons": res.n_polygons,
            "stages_s": {k: v for k, v in res.timings.items() if k.endswith("_s")},
        }, indent=2))


def shifted_copy(src: Path, dst: Path, dy: float, dx: float) -> Path:
    """A copy of ``src`` whose geotransform is moved by ``(dx, dy)`` of its pixels: the same pixel values, their
    content displaced on the map, as a misregistered after image is."""
    import rasterio
    from rasterio.transform import Affine

    shutil.copyfile(src, dst)
    with rasterio.open(dst, "r+") as ds:
        ds.transform = ds.transform * Affine.translation(dx, dy)
    return dst


def part_d(args, work: Path) -> None:
    import statistics

    from maskcd.data.synthetic import SyntheticConfig, make_scene_pair
    from maskcd.inference import MapOptions, map_scene
    from maskcd.models import build_model

    # no built-in misregistration, so that the offset to recover is exactly --coreg-shift
    scene = make_scene_pair(work / "d", seed=41, size=args.coreg_size, cfg=SyntheticConfig(max_shift_px=0.0))
    dy, dx = args.coreg_shift
    after = shifted_copy(scene["after"], work / "d" / "after_shifted.tif", dy, dx) if (dy or dx) else scene["after"]
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    device = torch.device(args.device if args.device.startswith("cuda") else "cpu")
    model.to(device)
    spec = model.inference_spec
    with torch.inference_mode():  # warm-up, so that the first mode does not pay it
        x = torch.zeros(args.batch_size, spec.num_bands, args.tile or spec.tile_size, args.tile or spec.tile_size,
                        device=device)
        model(x, x)
    modes = tuple(args.coreg_modes)
    print(f"(d) co-registration stage: {args.preset} on {args.device} (seeded random weights), {args.coreg_size}² "
          f"synthetic pair (seed 41, no built-in misregistration), after image's geotransform moved by dy {dy:+.2f}, dx {dx:+.2f} px; batch "
          f"{args.batch_size}, {args.workers} reader worker(s), {torch.get_num_threads()} torch threads; "
          f"{args.coreg_repeats} interleaved round(s) of {', '.join(modes)} (order rotated per round); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    walls: dict[str, list[float]] = {m: [] for m in modes}
    stages: dict[str, list[float]] = {m: [] for m in modes}
    infers: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    for rnd in range(args.coreg_repeats):
        for mode in modes[rnd % 3:] + modes[:rnd % 3]:
            opts = MapOptions(model=args.preset, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                              workers=args.workers, device=args.device, overwrite=True, coregister=mode)
            load = os.getloadavg()[0]
            c = _cpu_s()
            t = time.perf_counter()
            res = map_scene(scene["before"], after, work / "d" / f"{mode}.gpkg", opts, model=model, progress=False)
            walls[mode].append(time.perf_counter() - t)
            cpus[mode].append(_cpu_s() - c)
            stages[mode].append(res.timings.get("coregister_s", 0.0))
            infers[mode].append(res.timings.get("infer_s", 0.0))
            co = res.coregistration
            print(f"    round {rnd + 1} {mode:>6}: wall {walls[mode][-1]:.1f} s (infer {infers[mode][-1]:.1f} s), CPU "
                  f"{cpus[mode][-1]:.1f} s (process + reaped workers), "
                  f"coregister stage {stages[mode][-1]:.2f} s; {co.get('n_tie_points', 0)} windows/tie points, "
                  f"applied {co.get('applied')}, dy {co.get('dy_px')}, dx {co.get('dx_px')}, reliability "
                  f"{co.get('reliability')}, rmse {co.get('rmse_px')}; load average at start {load:.2f}", flush=True)
    summary = {"preset": args.preset, "size": args.coreg_size, "shift_px": [dy, dx], "walls_s": walls,
               "cpu_s": cpus, "coregister_s": stages, "infer_s": infers, "load_end": os.getloadavg()[0]}
    if args.json:
        args.json.with_name(args.json.stem + "_coreg.json").write_text(json.dumps(summary, indent=2))
    if "off" not in modes:
        return
    base_min, base_med = min(walls["off"]), statistics.median(walls["off"])
    for mode, goal in (("global", 0.05), ("local", 0.15)):
        if mode not in modes:
            continue
        share = statistics.median(stages[mode]) / base_min
        d_min = min(walls[mode]) / base_min - 1
        d_med = statistics.median(walls[mode]) / base_med - 1
        summary[mode] = {"stage_share": share, "wall_added_min": d_min, "wall_added_median": d_med}
        print(f"    {mode}: median stage {statistics.median(stages[mode]):.2f} s = {100 * share:.1f} % of the best off "
              f"wall {base_min:.1f} s (goal <= {100 * goal:.0f} %: {'met' if share <= goal else 'NOT met'}); wall "
              f"added vs off: best-of {100 * d_min:+.1f} %, median {100 * d_med:+.1f} % (noisy on a shared machine)")
    print(f"    load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.with_name(args.json.stem + "_coreg.json").write_text(json.dumps(summary, indent=2))


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its reaped children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def part_d2(args, work: Path) -> None:
    """The co-registration's own cost without the model: per mode, the estimate (``map_scene``'s ``coregister``
    stage) and one read of every map window through the pair's reader with the correction applied (the reads the
    DataLoader makes), interleaved over ``--coreg-repeats`` rounds, in wall and CPU time."""
    import statistics
    from dataclasses import replace

    from maskcd.data.synthetic import SyntheticConfig, make_scene_pair
    from maskcd.inference.tiling import grid_windows, resolve_overlap
    from maskcd.io import align_pair
    from maskcd.io.coreg import estimate
    from maskcd.io.radiometry import compute_radiometry
    from maskcd.models import build_model

    scene = make_scene_pair(work / "d", seed=41, size=args.coreg_size, cfg=SyntheticConfig(max_shift_px=0.0))
    dy, dx = args.coreg_shift
    after = shifted_copy(scene["after"], work / "d" / "after_shifted.tif", dy, dx) if (dy or dx) else scene["after"]
    spec = build_model(args.preset).inference_spec
    pair = align_pair(scene["before"], after, spec)
    pair = replace(pair, radiometry=compute_radiometry(pair, "auto"))
    tile = args.tile or spec.tile_size
    windows = grid_windows(pair.grid.height, pair.grid.width, tile, tile - resolve_overlap(tile, args.overlap))
    modes = tuple(args.coreg_modes)
    print(f"(d2) co-registration cost without the model: {args.coreg_size}² pair as in (d), {len(windows)} windows of "
          f"{tile}²; per mode the estimate and one corrected read of every window, {args.coreg_repeats} interleaved "
          f"round(s); load average {os.getloadavg()[0]:.2f}", flush=True)
    est: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    reads: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for rnd in range(args.coreg_repeats):
        for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:
            c, t = _cpu_s(), time.perf_counter()
            co = estimate(pair, mode)
            est[mode].append((time.perf_counter() - t, _cpu_s() - c))
            p = replace(pair, coreg=co)
            c, t = _cpu_s(), time.perf_counter()
            with p.reader() as rd:
                for w in windows:
                    rd.read(w.row, w.col, w.height, w.width)
            reads[mode].append((time.perf_counter() - t, _cpu_s() - c))
            print(f"    round {rnd + 1} {mode:>6}: estimate wall {est[mode][-1][0]:.2f} s, CPU {est[mode][-1][1]:.2f} s "
                  f"(applied {co.applied}, dy {co.dy:+.3f}, dx {co.dx:+.3f}, {co.n_tie_points} windows/tie points); "
                  f"reading {len(windows)} windows wall {reads[mode][-1][0]:.2f} s, CPU {reads[mode][-1][1]:.2f} s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for mode in modes:
        if not est[mode]:
            continue
        e_w, e_c = (statistics.median(v[i] for v in est[mode]) for i in (0, 1))
        r_w, r_c = (statistics.median(v[i] for v in reads[mode]) for i in (0, 1))
        print(f"    {mode:>6} medians: estimate wall {e_w:.2f} s / CPU {e_c:.2f} s; reads wall {r_w:.2f} s / CPU "
              f"{r_c:.2f} s")
    if args.coreg_forward:
        # the model's share of a map: CPU time of the bare batched forward over the first windows, per window
        model = build_model(args.preset).eval()
        k = min(len(windows), args.coreg_forward)
        with torch.inference_mode():
            x = torch.zeros(args.batch_size, spec.num_bands, tile, tile)
            model(x, x)  # warm-up
        c = _cpu_s()
        wall = bare_forward(model, pair, windows[:k], tile, args.batch_size, torch.device("cpu"), False)
        cpu = _cpu_s() - c
        print(f"    bare forward of {args.preset} over {k} windows (batch {args.batch_size}, {torch.get_num_threads()} "
              f"threads): wall {wall:.1f} s, CPU {cpu:.1f} s (incl. reading them) = {cpu / k:.2f} CPU s per window "
              f"-> {cpu / k * len(windows):.0f} CPU s for the {len(windows)} windows of the map; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)


def write_mosaic_vrt(src: Path, dst: Path, size: int, shift: tuple[float, float] = (0.0, 0.0)) -> Path:
    """A ``size × size`` VRT tiling ``src`` (north-up) repeatedly from its origin; ``shift`` = ``(dy, dx)`` pixels moves
    its geotransform (the content on the map, as a misregistered after image)."""
    import rasterio

    with rasterio.open(src) as ds:
        w, h, count, t, wkt = ds.width, ds.height, ds.count, ds.transform, ds.crs.to_wkt()
        dtype = {"uint8": "Byte"}[ds.dtypes[0]]
    lines = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">',
             f"  <SRS>{wkt.replace('&', '&amp;').replace('<', '&lt;')}</SRS>",
             f"  <GeoTransform>{t.c + shift[1] * t.a}, {t.a}, 0, {t.f + shift[0] * t.e}, 0, {t.e}</GeoTransform>"]
    for b in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{b}">')
        for r in range(0, size, h):
            for c in range(0, size, w):
                cw, ch = min(w, size - c), min(h, size - r)
                lines.append(
                    f'    <SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{cw}" ySize="{ch}"/>'
                    f'<DstRect xOff="{c}" yOff="{r}" xSize="{cw}" ySize="{ch}"/></SimpleSource>')
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    dst.write_text("\n".join(lines))
    return dst


def child_rss(args, work: Path) -> None:
    from maskcd.inference import MapOptions, map_scene

    torch.set_num_threads(max(1, args.threads))
    base = work / "base"
    size = args.child_rss
    before = write_mosaic_vrt(base / "bench_before.tif", work / f"before_{size}.vrt", size)
    mode = args.child_coreg
    shift = tuple(args.coreg_shift) if mode else (0.0, 0.0)
    after = write_mosaic_vrt(base / "bench_after.tif", work / f"after_{size}_{mode or 'default'}.vrt", size, shift)
    out = work / f"rss_{size}_{mode or 'default'}" / "out.gpkg"
    out.parent.mkdir(exist_ok=True)
    opts = MapOptions(model="pixel-diff", tile=args.rss_tile, overlap=64, batch_size=2, workers=1, device="cpu",
                      overwrite=True, min_area=25.0, **({"coregister": mode} if mode else {}))
    t = time.perf_counter()
    with MemorySampler() as mem:
        res = map_scene(before, after, out, opts, model=PixelDiffModel(args.rss_tile), progress=False)
    wall = time.perf_counter() - t
    stages = mem.stage_peaks(t, res.timings)
    print(json.dumps({"size": size, "wall_s": wall, "main_hwm_mb": _vm_hwm_mb(), "peak_pss_mb": mem.peak_pss,
                      "peak_rss_sum_mb": mem.peak_rss, "workers": mem.peak_workers,
                      "ru_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "n_polygons": res.n_polygons, "timings": res.timings, "stage_pss_mb": stages,
                      "coregistration": res.coregistration}))
    shutil.rmtree(out.parent, ignore_errors=True)


def write_noise_scene(folder: Path, size: int, seed: int = 11, sigma: float = 3.0) -> tuple[Path, Path]:
    """Noise-like ``mask.tif``/``prob.tif`` (size², UTM 33N, 0.5 m, tiled 512, deflate), written in strips with a halo
    so that memory stays small: p = sigmoid(2 z - 2) of Gaussian-filtered white noise z (unit variance), mask p >= 0.5.
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    mpath, ppath = folder / f"noise_mask_{size}.tif", folder / f"noise_prob_{size}.tif"
    if mpath.is_file() and ppath.is_file():
        return mpath, ppath
    block, halo = 512, int(4 * sigma) + 1

    def noise(k: int) -> np.ndarray:  # block k of white noise, the same whichever strip asks for it
        rows = max(0, min(block, size - k * block))
        return np.random.default_rng([seed, k]).standard_normal((rows, size), dtype=np.float32)

    scale = 1.0 / (2.0 * math.sqrt(math.pi) * sigma)  # std of 2-D white noise filtered by a unit Gaussian
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=255, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", crs="EPSG:32633",
                   transform=from_origin(500000.0, 5100000.0, 0.5, 0.5), BIGTIFF="IF_SAFER")
    tmp_m, tmp_p = mpath.with_suffix(".part.tif"), ppath.with_suffix(".part.tif")
    n_blocks = -(-size // block)
    with rasterio.open(tmp_m, "w", **profile) as m, rasterio.open(tmp_p, "w", **profile) as p:
        for k in range(n_blocks):
            parts = [b for b in (noise(k - 1)[-halo:] if k else None, noise(k),
                                 noise(k + 1)[:halo] if k + 1 < n_blocks else None) if b is not None]
            top = halo if k else 0
            z = ndimage.gaussian_filter(np.concatenate(parts), sigma, mode="reflect")
            z = z[top:top + len(parts[1 if k else 0])] / scale
            prob = np.clip(np.rint(254.0 / (1.0 + np.exp(-(2.0 * z - 2.0)))), 0, 254).astype(np.uint8)
            win = rasterio.windows.Window(0, k * block, size, len(z))
            p.write(prob, 1, window=win)
            m.write((prob >= 127).astype(np.uint8), 1, window=win)
    tmp_m.replace(mpath)
    tmp_p.replace(ppath)
    return mpath, ppath


def child_stage(args, work: Path) -> None:
    """Vectorise + write one noise scene the way ``map_scene`` does (streamed), or holding all (``--holding``)."""
    import rasterio

    from maskcd.inference.pipeline import GDAL_CACHEMAX_MB
    from maskcd.vectorization import ChangesGpkgWriter, iter_changes, vectorize_changes, write_changes_gpkg

    mask, prob = write_noise_scene(work / "noise", args.child_stage)
    import geopandas  # noqa: F401  (imported before the baseline, as in a maskcd-map run)

    base_mb = _vm_hwm_mb()  # after the imports (torch is among them, as in maskcd-map)
    out = work / f"stage_{args.child_stage}_{'hold' if args.holding else 'stream'}.gpkg"
    kw = dict(min_area_m2=25.0, simplify_m=0.5, attributes={"run_id": "bench"}, n_workers=2)
    t = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB):  # as map_scene runs the stage
        if args.holding:
            gdf = vectorize_changes(mask, prob, **kw)
            write_changes_gpkg(gdf, out, metadata={"benchmark": "stage"}, overwrite=True)
            n, held = len(gdf), len(gdf)
        else:
            stats: dict = {}
            writer = ChangesGpkgWriter(out, overwrite=True)
            for batch in iter_changes(mask, prob, stats=stats, **kw):
                writer.append(batch)
            n, held = writer.close({"benchmark": "stage"}).n_features, stats["peak_polygons_held"]
    print(json.dumps({"size": args.child_stage, "wall_s": time.perf_counter() - t, "main_hwm_mb": _vm_hwm_mb(),
                      "imports_mb": base_mb, "n_polygons": n, "peak_polygons_held": held, "holding": bool(args.holding)}))
    out.unlink(missing_ok=True)


def _time_v_max_rss_mb(stderr: str) -> float | None:
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    return None


def _run_measured_child(cmd: list[str], label: str) -> tuple[dict, float | None, float] | None:
    """Run a benchmark child under ``/usr/bin/time -v`` (when installed): its JSON line, the peak RSS that ``time -v``
    reports (None without it) and the figure to compare (that RSS, else the child's own VmHWM). None if it failed."""
    if Path("/usr/bin/time").is_file():
        cmd = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        print(f"    {label}: FAILED\n{proc.stderr[-2000:]}")
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = _time_v_max_rss_mb(proc.stderr)
    return r, rss, rss if rss is not None else r["main_hwm_mb"]


def part_c2(args, work: Path) -> None:
    print(f"(c2) vectorise + write stage on noise-like rasters ({', '.join(f'{s}²' for s in args.stage_sizes)}), "
          "each in a child process under /usr/bin/time -v")
    peaks: dict[tuple[int, bool], float] = {}
    for holding in (False, True) if args.holding else (False,):
        for size in args.stage_sizes:
            write_noise_scene(work / "noise", size)  # outside the measured child
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-stage", str(size), "--workdir", str(work)]
            if holding:
                cmd.append("--holding")
            measured = _run_measured_child(cmd, f"{size}²")
            if measured is None:
                continue
            r, rss, peaks[(size, holding)] = measured
            print(f"    {'holding all' if holding else 'streamed   '} {size:>6}²: {r['n_polygons']:>7} polygons, peak RSS "
                  f"{rss if rss is not None else float('nan'):.0f} MB (/usr/bin/time -v; VmHWM {r['main_hwm_mb']:.0f} MB, of which "
                  f"{r['main_hwm_mb'] - r['imports_mb']:.0f} MB above the imports), "
                  f"at most {r['peak_polygons_held']} polygons held, wall {r['wall_s']:.1f} s", flush=True)
    for holding in (False, True):
        sizes = [s for s in args.stage_sizes if (s, holding) in peaks]
        if len(sizes) >= 2:
            ratio = peaks[(max(sizes), holding)] / peaks[(min(sizes), holding)]
            goal = "" if holding else f" (goal <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})"
            print(f"    {'holding all' if holding else 'streamed'}: peak RSS {max(sizes)}² / {min(sizes)}² = "
                  f"{ratio:.2f}{goal}")


def part_c(args, work: Path) -> None:
    from maskcd.data.synthetic import make_scene_pair

    base = work / "base"
    make_scene_pair(base, seed=77, size=2048, prefix="bench")
    print(f"(c) peak RSS per scene size (VRT mosaics of a 2048² synthetic pair; pixel-difference model; tile "
          f"{args.rss_tile}, Dask stitching/vectorising on 2 workers)")
    peaks = []
    for size in args.rss_sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-rss", str(size), "--workdir", str(work),
               "--rss-tile", str(args.rss_tile), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"    {size}²: FAILED\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        total = max(r["main_hwm_mb"], r["peak_pss_mb"])
        peaks.append(total)
        t = r["timings"]
        print(f"    {size:>6}² = {size * size / 1e6:7.1f} MP: peak RSS main process {r['main_hwm_mb']:.0f} MB (VmHWM); "
              f"main + {r['workers']} reader worker(s): peak PSS {r['peak_pss_mb']:.0f} MB (RSS sum {r['peak_rss_sum_mb']:.0f} MB, "
              f"sampled 4/s); wall {r['wall_s']:.1f} s (align {t.get('align_s', 0):.1f}, "
              f"infer {t.get('infer_s', 0):.1f}, stitch {t.get('stitch_s', 0):.1f}, vectorise "
              f"{t.get('vectorize_s', 0):.1f}, write {t.get('write_s', 0):.1f}), {r['n_polygons']} polygons; "
              f"peak PSS per stage (MB): {r.get('stage_pss_mb')}")
    if peaks:
        flat = max(peaks) / min(peaks)
        print(f"    largest/smallest peak (max of main VmHWM, total PSS) = {flat:.2f}; max {max(peaks):.0f} MB (goal flat and < 3000 MB: "
              f"{'met' if max(peaks) < 3000 and flat < 1.5 else 'NOT met'})")


def part_e(args, work: Path) -> None:
    from maskcd.data.synthetic import make_scene_pair

    base = work / "base"
    make_scene_pair(base, seed=77, size=2048, prefix="bench")
    dy, dx = args.coreg_shift
    print(f"(e) peak RSS of the co-registration modes per scene size: VRT mosaics of a seeded 2048² synthetic pair, "
          f"after mosaic moved by dy {dy:+.2f}, dx {dx:+.2f} px; pixel-difference model, tile {args.rss_tile}; each run "
          f"in a child under /usr/bin/time -v; load average {os.getloadavg()[0]:.2f}", flush=True)
    peaks: dict[tuple[str, int], float] = {}
    for size in args.coreg_rss_sizes:
        for mode in args.coreg_rss_modes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-rss", str(size), "--workdir", str(work),
                   "--rss-tile", str(args.rss_tile), "--threads", str(args.threads), "--child-coreg", mode,
                   "--coreg-shift", f"{dy},{dx}"]
            measured = _run_measured_child(cmd, f"{size}² {mode}")
            if measured is None:
                continue
            r, rss, peaks[(mode, size)] = measured
            co, t = r["coregistration"], r["timings"]
            print(f"    {size:>6}² {mode:>6}: peak RSS {rss if rss is not None else float('nan'):.0f} MB (time -v), "
                  f"VmHWM {r['main_hwm_mb']:.0f} MB, peak PSS sum {r['peak_pss_mb']:.0f} MB; wall {r['wall_s']:.1f} s "
                  f"(coregister {t.get('coregister_s', 0):.2f} s, infer {t.get('infer_s', 0):.1f} s); applied "
                  f"{co.get('applied')}, dy {co.get('dy_px')}, dx {co.get('dx_px')}, {co.get('n_tie_points', 0)} "
                  f"windows/tie points; peak PSS per stage (MB) {r.get('stage_pss_mb')}; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    sizes = sorted(args.coreg_rss_sizes)
    for mode in args.coreg_rss_modes:
        if (mode, sizes[0]) in peaks and (mode, sizes[-1]) in peaks and len(sizes) > 1:
            print(f"    {mode}: peak RSS {sizes[-1]}² / {sizes[0]}² = {peaks[(mode, sizes[-1])] / peaks[(mode, sizes[0])]:.2f}")
    for size in sizes:
        if ("off", size) in peaks:
            for mode in args.coreg_rss_modes:
                if mode != "off" and (mode, size) in peaks:
                    print(f"    {size}²: {mode} - off = {peaks[(mode, size)] - peaks[('off', size)]:+.0f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="maskcd-swin-t")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--size", type=int, default=1024, help="scene size of part (a)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=2, help="map runs in (a), interleaved with bare-forward runs")
    ap.add_argument("--rss-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 8192, 16384])
    ap.add_argument("--rss-tile", type=int, default=1024)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-c", action="store_true")
    ap.add_argument("--skip-c2", action="store_true")
    ap.add_argument("--stage-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 16384],
                    help="scene sizes of part (c2)")
    ap.add_argument("--holding", action="store_true", help="(c2) also measure the old hold-everything path")
    ap.add_argument("--child-stage", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--coreg", action="store_true", help="also run part (d): the co-registration stage")
    ap.add_argument("--coreg-size", type=int, default=2048, help="scene size of part (d)")
    ap.add_argument("--coreg-repeats", type=int, default=2, help="interleaved rounds of off/global/local in part (d)")
    ap.add_argument("--coreg-shift", type=lambda s: [float(v) for v in s.split(",")], default=[1.3, 0.7],
                    help="DY,DX px by which parts (d) and (e) move the after image's geotransform")
    ap.add_argument("--coreg-modes", type=lambda s: s.split(","), default=["off", "global", "local"],
                    help="modes of parts (d) and (d2)")
    ap.add_argument("--coreg-components", action="store_true",
                    help="also run part (d2): the co-registration's estimate and corrected reads without the model")
    ap.add_argument("--coreg-forward", type=int, default=0,
                    help="(d2) also time the bare model forward over this many of the map's windows (CPU time)")
    ap.add_argument("--coreg-rss", action="store_true", help="also run part (e): peak RSS of the co-registration modes")
    ap.add_argument("--coreg-rss-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 8192])
    ap.add_argument("--coreg-rss-modes", type=lambda s: s.split(","), default=["off", "global", "local"])
    ap.add_argument("--child-coreg", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vectorize", action="store_true", help="also run part (b): benchmarks/vectorize.py")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures of part (a) to this JSON file")
    ap.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="maskcd_bench_map_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.child_rss:
        child_rss(args, work)
        return 0
    if args.child_stage:
        child_stage(args, work)
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}"
          + (f"; {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    try:
        if not args.skip_a:
            part_a(args, work)
        if args.vectorize:
            print("(b) vectorising (benchmarks/vectorize.py):", flush=True)
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "vectorize.py"), "--workdir", str(work / "b")],
                           check=False)
        if args.coreg_components:
            part_d2(args, work)
        if args.coreg:
            part_d(args, work)
        if args.coreg_rss:
            part_e(args, work)
        if not args.skip_c:
            part_c(args, work)
        if not args.skip_c2:
            part_c2(args, work)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
