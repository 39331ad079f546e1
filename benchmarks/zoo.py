"""Parameters and CPU forward time per image pair at 256² for every registered model preset.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/zoo.py [--threads 2] [--repeats 3] [--size 256] [--output results/zoo.md] [names...]

Each preset is built with random weights (the architecture, not a trained checkpoint), put in eval mode and run under
``torch.inference_mode`` on one pair (batch 1) of random inputs; the time is the median of ``--repeats`` runs after one
warm-up run; the minimum is printed too, as the least disturbed figure on a shared machine (``--clock process``
measures this process's CPU time instead of wall time). Parameters are counted in millions and in units of 2^20 (the UCD README's unit). The table is printed as
Markdown and optionally written to ``--output`` (written to a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskcd.models import build_model, count_parameters, list_models  # noqa: E402
from maskcd.models.registry import preset_info  # noqa: E402


def bench(name: str, size: int, repeats: int, clock=time.perf_counter) -> tuple[int, float, float]:
    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):
        model = build_model(name).eval()
    n = count_parameters(model)
    bands = model.inference_spec.num_bands
    a, b = torch.randn(1, bands, size, size), torch.randn(1, bands, size, size)
    times = []
    with torch.inference_mode():
        model(a, b)  # warm-up
        for _ in range(repeats):
            t0 = clock()
            out = model(a, b)
            times.append(clock() - t0)
    assert out.change_prob.shape == (1, size, size)
    del model
    return n, statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="presets (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall time (default) or this process's CPU time (less disturbed on a loaded machine)")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    names = args.names or list_models()
    lines = [
        f"CPU forward time per pair ({args.size}×{args.size}, batch 1, eval, median of {args.repeats} after 1 warm-up), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
        f"random weights; {'wall' if args.clock == 'wall' else 'process CPU'} time.",
        "",
        "| model | architecture | params (M) | params (2^20) | CPU s / pair (median) | CPU s / pair (min) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in names:
        n, t, t_min = bench(name, args.size, args.repeats, clock)
        row = (f"| {name} | {preset_info(name)['architecture']} | {n / 1e6:.2f} | {n / 2**20:.2f} | {t:.3f} "
               f"| {t_min:.3f} |")
        print(row, flush=True)
        lines.append(row)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(args.output.suffix + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
