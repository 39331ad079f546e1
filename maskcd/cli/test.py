"""``maskcd-test``: change-class metrics of a model on one split (also ``accelerate launch pipelines/test.py``).

    maskcd-test --dataset DATA --model MODEL [--split test] [--save-maps DIR] [--output metrics.json]

OA, precision, recall, F1, IoU and Cohen's kappa of the change class from TP/FP/FN/TN summed over the whole split and
over all processes, plus object-level precision/recall at IoU >= 0.5 (connected components).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskcd.cli import ArgumentParser, one_line_errors
from maskcd.io.atomic import write_text_atomic


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="maskcd-test", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="DatasetDict folder, Hub id, or scene catalog")
    p.add_argument("--model", required=True, help="model folder (e.g. exp/X/best_f1), preset or Hub id")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--threshold", type=float, default=0.5, help="change probability threshold")
    p.add_argument("--stride", type=int, help="grid stride in pixels (catalogs)")
    p.add_argument("--crop", type=int, help="chip size (catalogs; default the model's tile_size)")
    p.add_argument("--save-maps", metavar="DIR", help="write 0/255 PNG change maps here")
    p.add_argument("--output", help="metrics JSON path (default <model folder>/metrics_<split>.json or ./metrics.json)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    p.add_argument("--no-objects", action="store_true", help="skip object-level metrics")
    return p


ROWS = [("OA", "oa"), ("Precision", "precision"), ("Recall", "recall"), ("F1", "f1"), ("IoU", "iou"),
        ("Kappa", "kappa"), ("Object precision", "object_precision"), ("Object recall", "object_recall")]


def format_table(metrics: dict) -> str:
    lines = [f"{'metric':<18}{'value':>10}", "-" * 28]
    lines += [f"{name:<18}{metrics[key]:>10.4f}" for name, key in ROWS if key in metrics]
    lines.append(f"{'pairs':<18}{metrics['num_items']:>10d}")
    return "\n".join(lines)


@one_line_errors("maskcd-test")
def main(argv=None) -> int:
    import torch
    from accelerate import Accelerator

    from maskcd.errors import InputError
    from maskcd.models import load_model
    from maskcd.training.data import DataOptions, make_split
    from maskcd.training.evaluate import evaluate

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    precision = args.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu=True without a GPU: accelerate only sets up gloo ranks under torchrun when told it runs on CPU
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    model = load_model(args.model).to(accelerator.device).eval()
    options = DataOptions(crop=args.crop, augment=False, stride=args.stride)
    dataset = make_split(args.dataset, args.split, model.inference_spec, options, train=False)
    metrics = evaluate(model, dataset, accelerator, batch_size=args.batch_size, threshold=args.threshold,
                       objects=not args.no_objects, maps_dir=args.save_maps, progress=True)
    metrics.update({"dataset": args.dataset, "model": args.model, "split": args.split, "threshold": args.threshold})
    if accelerator.is_main_process:
        if args.output:
            out = Path(args.output)
        elif Path(args.model).is_dir():
            out = Path(args.model) / f"metrics_{args.split}.json"
        else:
            out = Path("metrics.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(metrics, indent=2))
        print(format_table(metrics))
        print(f"metrics written to {out}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
