"""Forward throughput (pairs/s) of the MaskCD presets at 256², batch 1 and 8.

    python benchmarks/model_forward.py                       # CPU, fp32
    python benchmarks/model_forward.py --device cuda --bf16  # GPU, bf16 autocast
    python benchmarks/model_forward.py --presets maskcd-swin-b --device cuda --json fwd.json  # figures as JSON too

Each configuration runs one warm-up pass, then timed passes until ``--seconds`` have elapsed (at least 2). The numbers
are wall-clock on a shared machine: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from maskcd.models import build_model, count_parameters


def bench(model, batch: int, size: int, device: torch.device, bf16: bool, seconds: float) -> float:
    a = torch.randn(batch, 3, size, size, device=device)
    b = torch.randn(batch, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with torch.inference_mode(), autocast:
            return model(a, b).change_prob

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["maskcd-tiny", "maskcd-swin-t", "maskcd-swin-b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} bf16={args.bf16} size={args.size} torch_threads={torch.get_num_threads()}")
    print(f"{'preset':<16}{'params':>10}" + "".join(f"{'b=' + str(b) + ' pairs/s':>16}" for b in args.batches))
    figures = []
    for name in args.presets:
        model = build_model(name).to(device).eval()
        rates = [bench(model, b, args.size, device, args.bf16, args.seconds) for b in args.batches]
        print(f"{name:<16}{count_parameters(model) / 1e6:>9.1f}M" + "".join(f"{r:>16.2f}" for r in rates), flush=True)
        figures += [{"preset": name, "batch": b, "pairs_per_s": r, "mp_per_s": r * args.size**2 / 1e6}
                    for b, r in zip(args.batches, rates)]
        del model
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "bf16": args.bf16, "size": args.size,
                                         "results": figures}, indent=2))


if __name__ == "__main__":
    main()
