"""``maskcd-train``: train a change-detection model with accelerate (also ``accelerate launch pipelines/train.py``).

    maskcd-train --dataset DATA --model maskcd-swin-t --batch-size 8 --learning-rate 5e-5 --epochs 100

DATA is a folder saved by ``maskcd-dataset`` / ``save_to_disk``, a Hub dataset id, or a YAML/JSON GeoTIFF scene catalog.
Checkpoints: ``<output-dir>/best_f1/`` and ``<output-dir>/last/``; per-epoch metrics in ``metrics.jsonl``.
Options: the :class:`~maskcd.training.trainer.TrainConfig` defaults < ``--config FILE.yaml`` (same keys, e.g.
``configs/train-*.yaml``) < the flags given (:mod:`maskcd.options`).
"""

from __future__ import annotations

import argparse

from maskcd.cli import ArgumentParser, one_line_errors


#: option name → the flag's argparse ``dest``, where they differ (``--no-augment`` sets ``augment``)
RENAMED = {"augment": "no_augment"}


def build_parser() -> argparse.ArgumentParser:
    """Flags default to ``None``: the defaults live in :class:`~maskcd.training.trainer.TrainConfig` (shown here in
    the help), so only the flags given override ``--config``."""
    from maskcd.training.trainer import LR_SCHEDULES, MIXED_PRECISION, OPTIMIZERS, TrainConfig

    d = TrainConfig(dataset="-")
    p = ArgumentParser(prog="maskcd-train", description=__doc__.split("\n")[0])
    p.add_argument("dataset_pos", nargs="?", metavar="DATASET", help="same as --dataset")
    p.add_argument("--config", help="YAML file of options (keys = option names with _), e.g. configs/train-*.yaml")
    p.add_argument("--dataset", help="DatasetDict folder, Hub id, or scene catalog (.yaml/.json)")
    p.add_argument("--model", help=f"preset name or model folder (default {d.model})")
    p.add_argument("--output-dir", help="default exp/<dataset name>/")
    p.add_argument("--batch-size", type=int, help=f"pairs per process and step (default {d.batch_size})")
    p.add_argument("--learning-rate", type=float, help=f"default {d.learning_rate}")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--optimizer", metavar="{" + ",".join(OPTIMIZERS) + "}", help=f"default {d.optimizer}")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--warmup-epochs", type=int, help=f"default {d.warmup_epochs}")
    p.add_argument("--lr-schedule", metavar="{" + ",".join(LR_SCHEDULES) + "}",
                   help=f"step the cosine schedule once per epoch or per optimizer step (default {d.lr_schedule})")
    p.add_argument("--warmup-steps", type=int, help="warm-up in optimizer steps (--lr-schedule step; default 0)")
    p.add_argument("--min-lr", type=float, help=f"cosine floor (default {d.min_lr})")
    p.add_argument("--grad-accum", type=int, help=f"gradient accumulation steps (default {d.grad_accum})")
    p.add_argument("--clip-grad", type=float, help=f"max gradient norm (0 = off; default {d.clip_grad})")
    p.add_argument("--mixed-precision", metavar="{" + ",".join(MIXED_PRECISION) + "}",
                   help="auto (default) = bf16 on a GPU that supports it, else fp32")
    p.add_argument("--val-every", type=int, help=f"validate every k epochs and after the last (default {d.val_every})")
    p.add_argument("--val-batch-size", type=int, help=f"default {d.val_batch_size}")
    p.add_argument("--crop", type=int, help="training crop (patch datasets) / chip size (catalogs; default tile_size)")
    p.add_argument("--no-augment", action="store_const", const=False, default=None, help="no flips/rotations")
    p.add_argument("--jitter", type=float, help=f"per-date radiometric jitter strength (default {d.data.jitter})")
    p.add_argument("--chips-per-site", type=int,
                   help=f"random chips per site and epoch (catalogs; default {d.data.chips_per_site})")
    p.add_argument("--stride", type=int, help="validation grid stride in pixels (catalogs)")
    p.add_argument("--batch-sampler", action="store_true", default=None,
                   help="RandomBatchGeoSampler instead of RandomGeoSampler")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--num-workers", type=int, help=f"default {d.num_workers}")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke runs)")
    p.add_argument("--resume", metavar="FOLDER", help="continue from a last/ folder ('last' = <output-dir>/last)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="start again in an output folder that holds a run")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (options not given stay ``None``; :func:`config_from_args` layers them)."""
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace):
    """The :class:`~maskcd.training.trainer.TrainConfig` of ``TrainConfig`` defaults < ``--config`` < flags given."""
    from maskcd.options import given_flags, load_options, option_keys
    from maskcd.training.trainer import TrainConfig

    flags = given_flags(args, option_keys(TrainConfig), rename=RENAMED)
    if flags.get("dataset") is None and args.dataset_pos:
        flags["dataset"] = args.dataset_pos
    return load_options(TrainConfig, flags, config=args.config,
                        required={"dataset": "no dataset: pass --dataset FOLDER|HUB_ID|CATALOG.yaml (or 'dataset:' "
                                             "in the --config file)"})


@one_line_errors("maskcd-train")
def main(argv=None) -> int:
    from maskcd.training.trainer import train

    cfg = config_from_args(parse_args(argv))
    summary = train(cfg)
    print(f"best F1 {summary['best_f1']:.4f}; checkpoints in {summary['output_dir']}/best_f1 and /last")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
