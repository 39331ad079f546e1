"""``maskcd-dataset``: build a patch DatasetDict (train/val/test; imageA, imageB, label 0/255) and save it.

    maskcd-dataset folders ROOT [ROOT ...] -o OUT        # A/B/label folders (published creator layout)
    maskcd-dataset scenes CATALOG.yaml -o OUT --tile 256 --stride 256   # GeoTIFF scenes, split by site
    ... [--push-to-hub owner/name [--private]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskcd.cli import ArgumentParser, one_line_errors
from maskcd.errors import InputError
from maskcd.io.atomic import atomic_write, check_target


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="maskcd-dataset", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    common = ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", required=True, help="folder for save_to_disk")
    common.add_argument("--val-fraction", type=float, default=0.2)
    common.add_argument("--test-fraction", type=float, default=0.2)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    common.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the DatasetDict to this Hub dataset repo")
    common.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    f = sub.add_parser("folders", parents=[common], help="from A/B/label folders")
    f.add_argument("roots", nargs="+", help="folders with A/, B/, label/ (or train|val|test/A,B,label)")
    s = sub.add_parser("scenes", parents=[common], help="tiles from a GeoTIFF scene catalog")
    s.add_argument("catalog", help="YAML/JSON catalog of sites (see maskcd.data.scenes)")
    s.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    s.add_argument("--stride", type=int, default=None, help="tile stride in pixels (default: tile)")
    return p


def save_dataset_dict(dsd, output: Path, overwrite: bool) -> None:
    """``save_to_disk`` into a temporary sibling folder, then rename (nothing half-written on failure)."""
    check_target(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output, overwrite=overwrite) as tmp:
        dsd.save_to_disk(str(tmp))


@one_line_errors("maskcd-dataset")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1)")
    output = Path(args.output)
    check_target(output, args.overwrite)
    if args.kind == "folders":
        from maskcd.data.builder import build_from_folders

        dsd = build_from_folders(args.roots, args.val_fraction, args.test_fraction, args.seed)
        site_splits = None
    else:
        from maskcd.data.builder import build_from_scenes

        dsd, site_splits = build_from_scenes(args.catalog, args.tile, args.stride, args.val_fraction,
                                             args.test_fraction, args.seed)
    save_dataset_dict(dsd, output, args.overwrite)
    sizes = ", ".join(f"{s}: {len(d)}" for s, d in dsd.items())
    print(f"wrote {output} ({sizes})")
    if site_splits:
        print("sites by split: " + "; ".join(f"{s}={sorted(n for n, v in site_splits.items() if v == s)}"
                                            for s in ("train", "val", "test")))
    if args.push_to_hub:
        try:
            dsd.push_to_hub(args.push_to_hub, private=args.private)
        except Exception as err:  # offline, no token, no rights: the local copy is complete
            raise InputError(f"saved {output}, but pushing to {args.push_to_hub} failed ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); log in with `hf auth login`, unset "
                             f"HF_HUB_OFFLINE and retry") from err
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
