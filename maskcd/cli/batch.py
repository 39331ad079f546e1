"""``maskcd-batch CATALOG -o OUTDIR``: map every site of a catalog on Dask, resumable, one folder per site.

Exit codes: 0 all sites mapped or up to date; 1 at least one site failed (see ``OUTDIR/failures.csv``);
2 unusable input (catalog, config, options, scheduler).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from maskcd.cli import one_line_errors
from maskcd.errors import InputError
from maskcd.inference.blend import BLEND_MODES
from maskcd.inference.options import MapOptions

PROG = "maskcd-batch"
#: MapOptions keys that the batch runner sets per site; a --config file may not set them.
PER_SITE_KEYS = ("prob_out", "mask_out", "aoi", "overwrite")


def _bands(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bands must be 1-based integers like 1,2,3, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"bands must be 1-based integers like 1,2,3, got {text!r}")
    return values


def _assets(text: str) -> list[str]:
    keys = [v.strip() for v in text.split(",") if v.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"assets must be asset keys like visual or red,green,blue, got {text!r}")
    return keys


def _overlap(text: str) -> float:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Map change for every site of a catalog (CSV, GeoPackage or GeoJSON with site_id, before, after "
        "[, before_date, after_date, AOI geometry], or site_id, date, path per image for time series).",
    )
    p.add_argument("catalog", type=Path, help="site catalog (image paths are relative to its folder), or a STAC "
                   "ItemCollection / Catalog (JSON file or folder with catalog.json)")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (one sub-folder per site)")
    p.add_argument("--config", type=Path, help="YAML with maskcd-map keys (model, tile, overlap, threshold, ...); "
                   "command-line options override it")
    stac = p.add_argument_group("STAC input")
    stac.add_argument("--site-key", dest="site_key", help="item property naming the site (default: site_id, then "
                      "mgrs:tile)")
    stac.add_argument("--assets", type=_assets, help="asset key(s): one RGB asset (visual) or single-band assets "
                      "stacked by VRT (red,green,blue); default visual, else red,green,blue")
    stac.add_argument("--sites", type=Path, help="polygon layer with a site_id column: items are grouped by "
                      "intersection and each polygon is its site's AOI")
    run = p.add_argument_group("cluster")
    run.add_argument("--workers", type=int, help="local Dask worker processes, 1 thread each "
                     "(default: one per GPU on CUDA, else half the cores, at most 4)")
    run.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786) instead of a "
                     "local cluster; the workers must see the same paths")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="force", action="store_false", default=False,
                      help="skip sites whose manifest matches and whose outputs exist (default)")
    mode.add_argument("--force", dest="force", action="store_true", help="redo every site")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging, with the traceback of each failed site")
    m = p.add_argument_group("mapping (as maskcd-map, applied to every site)")
    m.add_argument("--model", help="preset name, model folder or Hub id")
    m.add_argument("--bands", type=_bands, help="1-based bands read from both images, e.g. 1,2,3")
    m.add_argument("--tile", type=int, help="window size in pixels (default: the model's)")
    m.add_argument("--overlap", type=_overlap, help="window overlap: pixels (>= 1) or fraction of the tile (< 1)")
    m.add_argument("--threshold", type=float, help="change probability threshold")
    m.add_argument("--min-area", type=float, dest="min_area", help="smallest polygon in m²")
    m.add_argument("--simplify", type=float, help="simplification tolerance in metres")
    m.add_argument("--batch-size", type=int, dest="batch_size", help="windows per forward pass")
    m.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    m.add_argument("--blend", choices=("cosine", "mean", "crop"), help="window blending")
    m.add_argument("--layer", help="GeoPackage layer name (time series: <layer>_<before>_<after>)")
    from maskcd.cli.map import add_real_imagery_args

    add_real_imagery_args(m)
    m.add_argument("--loader-workers", type=int, dest="loader_workers",
                   help="DataLoader reader processes per site (YAML key: workers); 0 inside Dask's daemonic workers")
    return p


def load_config(path: Path, *, strict: bool = True) -> dict:
    """Read a YAML of MapOptions keys; unknown keys raise :class:`InputError`, and so do per-site keys
    (``prob_out``, ``mask_out``, ``aoi``, ``overwrite``) when ``strict``, else they are dropped."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as err:
        raise InputError(f"config {path} cannot be read ({err.strerror}); check the path") from err
    except yaml.YAMLError as err:
        raise InputError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise InputError(f"config {path} must be a mapping of maskcd-map keys, got {type(data).__name__}")
    valid = [k for k in MapOptions.keys() if k not in PER_SITE_KEYS]
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if not strict:
        data = {k: v for k, v in data.items() if k not in PER_SITE_KEYS}
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise InputError(f"config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    return data


def options_from_args(args: argparse.Namespace) -> MapOptions:
    """``maskcd/configs/map.yaml`` (the maskcd-map defaults) < ``--config`` YAML < command-line options."""
    from maskcd.cli.map import default_config_path

    values: dict = {}
    if default_config_path().is_file():
        values.update({k: v for k, v in load_config(default_config_path(), strict=False).items()})
    if args.config:
        values.update(load_config(args.config))
    for f in fields(MapOptions):
        # MapOptions.workers are the DataLoader readers (--loader-workers); args.workers is the Dask cluster's size
        value = getattr(args, "loader_workers" if f.name == "workers" else f.name, None)
        if value is not None and f.name not in PER_SITE_KEYS:
            values[f.name] = value
    if values.get("bands") is not None and not isinstance(values["bands"], list):
        try:
            values["bands"] = _bands(str(values["bands"]))
        except argparse.ArgumentTypeError as err:
            raise InputError(str(err)) from err
    if values.get("gsd") is not None and not isinstance(values["gsd"], (int, float)):
        from maskcd.cli.map import _gsd

        try:
            values["gsd"] = _gsd(str(values["gsd"]))
        except argparse.ArgumentTypeError as err:
            raise InputError(str(err)) from err
    opts = MapOptions(**values)
    for key, ok in (("coregister", opts.coregister in ("off", "global", "local")),
                    ("scale", opts.scale in ("auto", "none", "percentile", "minmax")),
                    ("batch_size", opts.batch_size >= 1), ("workers", opts.workers >= 0),
                    ("threshold", 0.0 <= opts.threshold <= 1.0), ("min_area", opts.min_area >= 0),
                    ("tile", opts.tile is None or opts.tile >= 16), ("overlap", opts.overlap >= 0),
                    ("blend", opts.blend in BLEND_MODES)):
        if not ok:
            raise InputError(f"invalid {key} {getattr(opts, key)!r}: see {PROG} --help")
    return opts


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    options = options_from_args(args)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    log = logging.getLogger("maskcd")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        from maskcd.batch.runner import run_batch, summary_table

        result = run_batch(args.catalog, args.outdir, options, workers=args.workers, scheduler=args.scheduler,
                           force=args.force, progress=not args.no_progress, site_key=args.site_key,
                           assets=args.assets, sites=args.sites)
    finally:  # main() may be called in-process (tests, notebooks): leave logging as it was
        log.removeHandler(handler)
        log.setLevel(old_level)
    print(summary_table(result))
    if result.merged:
        print(f"merged: {result.merged}")
    if result.stac_catalog:
        print(f"STAC catalog: {result.stac_catalog}")
    if result.failed:
        print(f"{len(result.failed)} site(s) failed; see {result.failures_csv}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
