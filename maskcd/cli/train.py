"""``maskcd-train``: train a change-detection model with accelerate (also ``accelerate launch pipelines/train.py``).

    maskcd-train --dataset DATA --model maskcd-swin-t --batch-size 8 --learning-rate 5e-5 --epochs 100

DATA is a folder saved by ``maskcd-dataset`` / ``save_to_disk``, a Hub dataset id, or a YAML/JSON GeoTIFF scene catalog.
Checkpoints: ``<output-dir>/best_f1/`` and ``<output-dir>/last/``; per-epoch metrics in ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse

from maskcd.cli import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskcd-train", description=__doc__.split("\n")[0])
    p.add_argument("dataset_pos", nargs="?", metavar="DATASET", help="same as --dataset")
    p.add_argument("--config", help="YAML file of option defaults (keys = option names with _), e.g. configs/train-*.yaml")
    p.add_argument("--dataset", help="DatasetDict folder, Hub id, or scene catalog (.yaml/.json)")
    p.add_argument("--model", default="maskcd-swin-t", help="preset name or model folder (default maskcd-swin-t)")
    p.add_argument("--output-dir", help="default exp/<dataset name>/")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per process and step")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=1e-7, help="cosine floor")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto = bf16 on a GPU that supports it, else fp32")
    p.add_argument("--val-every", type=int, default=5, help="validate every k epochs (and after the last)")
    p.add_argument("--val-batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, help="training crop (patch datasets) / chip size (catalogs; default tile_size)")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations")
    p.add_argument("--jitter", type=float, default=0.0, help="per-date radiometric jitter strength")
    p.add_argument("--chips-per-site", type=int, default=16, help="random chips per site and epoch (catalogs)")
    p.add_argument("--stride", type=int, help="validation grid stride in pixels (catalogs)")
    p.add_argument("--batch-sampler", action="store_true", help="RandomBatchGeoSampler instead of RandomGeoSampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke runs)")
    p.add_argument("--resume", metavar="FOLDER", help="continue from a last/ folder ('last' = <output-dir>/last)")
    p.add_argument("--overwrite", action="store_true", help="start again in an output folder that holds a run")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line; ``--config FILE`` supplies defaults that explicit options override."""
    import yaml

    from maskcd.errors import InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            with open(args.config) as f:
                values = yaml.safe_load(f) or {}
        except OSError as err:
            raise InputError(f"--config {args.config}: {err.strerror}") from err
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"--config {args.config}: unknown keys {unknown}; valid: {sorted(known - {'help'})}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def config_from_args(args):
    from maskcd.errors import InputError
    from maskcd.training.data import DataOptions
    from maskcd.training.trainer import TrainConfig

    dataset = args.dataset or args.dataset_pos
    if not dataset:
        raise InputError("no dataset: pass --dataset FOLDER|HUB_ID|CATALOG.yaml")
    for name in ("batch_size", "epochs", "grad_accum", "val_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.learning_rate <= 0:
        raise InputError("--learning-rate must be positive")
    data = DataOptions(crop=args.crop, augment=not args.no_augment, jitter=args.jitter,
                       chips_per_site=args.chips_per_site, stride=args.stride, batch_sampler=args.batch_sampler,
                       seed=args.seed)
    return TrainConfig(
        dataset=dataset, model=args.model, output_dir=args.output_dir, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, optimizer=args.optimizer,
        epochs=args.epochs, warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, grad_accum=args.grad_accum,
        clip_grad=args.clip_grad or None, mixed_precision=args.mixed_precision, val_every=args.val_every,
        val_batch_size=args.val_batch_size, seed=args.seed, num_workers=args.num_workers, resume=args.resume,
        overwrite=args.overwrite, max_steps_per_epoch=args.max_steps_per_epoch, data=data,
    )


@one_line_errors("maskcd-train")
def main(argv=None) -> int:
    from maskcd.training.trainer import train

    cfg = config_from_args(parse_args(argv))
    summary = train(cfg)
    print(f"best F1 {summary['best_f1']:.4f}; checkpoints in {summary['output_dir']}/best_f1 and /last")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
