"""``maskcd-map BEFORE AFTER -o OUT.gpkg``: map the change between two GeoTIFFs into a styled GeoPackage.

Settings come from ``maskcd/configs/map.yaml``, then ``--config FILE.yaml`` (same keys), then the command-line flags.
``maskcd-map --demo -o OUT.gpkg`` generates a synthetic mining-site pair (seed 2026, not used in training) beside OUT,
maps it with the committed demo checkpoint and prints precision/recall/F1/IoU of the mask against the truth.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from maskcd.cli import ArgumentParser, one_line_errors
from maskcd.errors import InputError
from maskcd.inference.blend import BLEND_MODES
from maskcd.inference.options import MapOptions
from maskcd.options import given_flags, load_options

PROG = "maskcd-map"
DEMO_SEED = 2026
DEMO_SIZE = 1024


def default_config_path() -> Path:
    from maskcd.models.registry import config_dir

    return config_dir() / "map.yaml"


def _one_of(modes) -> str:
    """A flag's metavar listing its values; :class:`MapOptions` checks them (one line, exit 2, not argparse's usage)."""
    return "{" + ",".join(modes) + "}"


def add_mapping_args(p) -> None:
    """The :class:`MapOptions` flags that ``maskcd-map`` and ``maskcd-batch`` share (everything except the per-run
    outputs ``--aoi``/``--prob-out``/``--mask-out``/``--overwrite`` and the reader count ``--workers``).

    Every flag defaults to ``None``, so only the flags given override ``--config``; :class:`MapOptions` checks the
    values (one line, exit code 2).
    """
    from maskcd.io.coreg import MODES as COREG_MODES
    from maskcd.io.radiometry import MODES as SCALE_MODES

    p.add_argument("--model", help="preset, task alias (mining, buildings, landslides, cropland, urban), model folder or "
                   "Hub id (default from maskcd/configs/map.yaml: mining)")
    p.add_argument("--bands", help="1-based band indices read from both images, e.g. 1,2,3")
    p.add_argument("--tile", type=int, help="window size in px (default: the model's native tile)")
    p.add_argument("--overlap", type=float, help="overlap between windows: px (>= 1) or fraction of the tile (< 1)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threshold", type=float, help="change probability threshold")
    p.add_argument("--min-area", type=float, help="minimum polygon area in m²")
    p.add_argument("--simplify", type=float, help="simplification tolerance in m (default: one pixel)")
    p.add_argument("--blend", metavar=_one_of(BLEND_MODES), help="overlap blending")
    p.add_argument("--layer", help="GeoPackage layer name (maskcd-batch time series: <layer>_<before>_<after>)")
    p.add_argument("--coregister", metavar=_one_of(COREG_MODES),
                   help="co-register the after image: one sub-pixel shift (global, default) or a tie-point field (local)")
    p.add_argument("--gsd", help="mapping pixel size: model (default; the model's GSD when the input is "
                   "> 1.5x away), native, or metres")
    p.add_argument("--scale", metavar=_one_of(SCALE_MODES),
                   help="radiometry: auto (default: 8-bit as is, 16-bit/float per-band 2-98 %% percentiles), none, "
                   "percentile or minmax")
    p.add_argument("--match-histogram", action="store_true", default=None, dest="match_histogram",
                   help="match the after image's histograms to the before image's before scaling")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Map changes between two co-located GeoTIFFs into a GeoPackage.")
    p.add_argument("before", nargs="?", help="earlier image (its grid is the reference)")
    p.add_argument("after", nargs="?", help="later image (warped onto the before grid)")
    p.add_argument("-o", "--output", required=True, help="GeoPackage to write")
    add_mapping_args(p)
    p.add_argument("--aoi", help="polygon file restricting the mapped area")
    p.add_argument("--prob-out", help="probability COG path (default: <OUT>_change_prob.tif)")
    p.add_argument("--mask-out", help="mask COG path (default: <OUT>_change_mask.tif)")
    p.add_argument("--workers", type=int, help="DataLoader / Dask workers")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace existing outputs")
    p.add_argument("--config", help="YAML file with the same keys as the flags")
    p.add_argument("--demo", action="store_true", help="map a generated synthetic mining-site pair and score it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    return p


def resolve_options(args: argparse.Namespace) -> MapOptions:
    """``maskcd/configs/map.yaml`` < ``--config`` YAML < the flags given (see :mod:`maskcd.options`)."""
    return load_options(MapOptions, given_flags(args, MapOptions.keys()), config=args.config,
                        defaults=default_config_path())


def _demo_inputs(out: Path, model_given: bool) -> tuple[str, str, str, str]:
    try:
        from maskcd.data.synthetic import make_scene_pair
    except ImportError as err:
        raise InputError(f"--demo needs maskcd.data.synthetic ({err}); reinstall maskcd") from err
    import maskcd

    weights = Path(maskcd.__file__).resolve().parent / "weights" / "demo"
    if not model_given and not (weights / "config.json").is_file():
        raise InputError(f"--demo: the demo checkpoint {weights} is missing; pass --model or reinstall maskcd")
    folder = out.with_name(out.stem + "_demo_inputs")
    paths = make_scene_pair(folder, seed=DEMO_SEED, size=DEMO_SIZE)
    return str(paths["before"]), str(paths["after"]), str(paths["truth"]), str(weights)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=f"{PROG}: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    out = Path(args.output)
    truth = None
    if args.demo:
        if args.before or args.after:
            raise InputError("--demo generates its own images: pass only -o OUT.gpkg")
        before, after, truth, weights = _demo_inputs(out, model_given=args.model is not None)
        if args.model is None:
            args.model = weights
    else:
        if not (args.before and args.after):
            raise InputError("pass BEFORE and AFTER images (or --demo)")
        before, after = args.before, args.after
    options = resolve_options(args)

    from maskcd.inference import map_scene

    t0 = time.perf_counter()
    result = map_scene(before, after, out, options, progress=not args.quiet)
    wall = time.perf_counter() - t0
    if not result.n_pixels:  # non-main rank under accelerate launch
        return 0
    import rasterio

    with rasterio.open(result.mask_path) as ds:
        px_km2 = result.n_pixels * abs(ds.transform.a * ds.transform.e) / 1e6
    print(
        f"{PROG}: {result.n_pixels:,} px ({px_km2:.3f} km², {result.valid_km2:.3f} km² valid), "
        f"{result.n_polygons} polygons, {result.changed_km2:.4f} km² changed, "
        f"shift {result.shift_px[0]:+.2f},{result.shift_px[1]:+.2f} px"
        f"{' (applied)' if result.coregistration.get('applied') else ''}, wall {wall:.1f} s "
        f"({result.n_pixels / 1e6 / max(wall, 1e-9):.2f} MP/s) -> {result.gpkg}"
    )
    if truth is not None:
        from maskcd.evaluation.scene import score_mask

        m = score_mask(result.mask_path, truth)
        print(f"{PROG}: demo vs truth: precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
              f"F1 {m['f1']:.3f}, IoU {m['iou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
