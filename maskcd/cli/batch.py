"""``maskcd-batch CATALOG -o OUTDIR``: map every site of a catalog on Dask, resumable, one folder per site.

Exit codes: 0 all sites mapped or up to date; 1 at least one site failed (see ``OUTDIR/failures.csv``);
2 unusable input (catalog, config, options, scheduler).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maskcd.cli import ArgumentParser, one_line_errors
from maskcd.errors import InputError
from maskcd.inference.options import MapOptions
from maskcd.options import given_flags, load_options

PROG = "maskcd-batch"
#: MapOptions keys that the batch runner sets per site; a --config file may not set them.
PER_SITE_KEYS = ("prob_out", "mask_out", "aoi", "overwrite")


def _assets(text: str) -> list[str]:
    keys = [v.strip() for v in text.split(",") if v.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"assets must be asset keys like visual or red,green,blue, got {text!r}")
    return keys


def build_parser() -> argparse.ArgumentParser:
    from maskcd.cli.map import add_mapping_args

    p = ArgumentParser(
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
    add_mapping_args(m)
    m.add_argument("--loader-workers", type=int, dest="loader_workers",
                   help="DataLoader reader processes per site (YAML key: workers); 0 inside Dask's daemonic workers")
    return p


def options_from_args(args: argparse.Namespace) -> MapOptions:
    """``maskcd/configs/map.yaml`` (the maskcd-map defaults) < ``--config`` YAML < command-line options.

    The per-site keys (:data:`PER_SITE_KEYS`) are the runner's: a ``--config`` may not set them. ``--workers`` sizes
    the Dask cluster; the options' ``workers`` (DataLoader readers per site) come from ``--loader-workers``.
    """
    from maskcd.cli.map import default_config_path

    flags = given_flags(args, MapOptions.keys(), rename={"workers": "loader_workers"})
    return load_options(MapOptions, flags, config=args.config, defaults=default_config_path(), exclude=PER_SITE_KEYS)


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
