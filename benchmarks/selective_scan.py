"""Our selective scan vs VMamba's reference ``selective_scan_torch`` on the scans of a VMamba-T forward at 256².

    python benchmarks/selective_scan.py                      # CPU
    python benchmarks/selective_scan.py --device cuda        # GPU (when one is present)
    python benchmarks/selective_scan.py --threads 2 --json out.json

The scan inputs are recorded from one ``minenetcd-vmamba-t`` backbone pass over a 256² image (seeded random
weights with VMamba's initialisation): 11 scans, L = 4096, 1024, 256, 64 with 4 × 192 ... 4 × 1536 channels and
d_state 1. Each is timed with our :func:`maskcd.models.selective_scan.selective_scan` and with VMamba upstream's
pure-PyTorch reference (github.com/MzeroMiko/VMamba ``classification/models/csms6s.py``, MIT, the oracle's substitute
for the CUDA kernel, read from a local checkout given with ``--reference``; nothing of it ships in maskcd), and the
outputs are compared. Then the whole ``minenetcd-vmamba-t`` forward per 256² pair is timed (batch 1). On CUDA "ours"
is what the model uses there (``backend="auto"``: the fused Triton kernel of
:mod:`maskcd.models.selective_scan_triton`) and the PyTorch scan (``backend="torch"``) is timed beside it, for the
scans and for the forward. Per shape, our scan and the reference take turns and the best of ``--rounds`` /
``--reference-rounds`` runs counts, in wall clock and in thread CPU time (the latter meaningful with ``--threads 1``;
it leaves out waiting for a core on a shared machine). Compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

import maskcd.models.vmamba as vmamba
from maskcd.models import build_model
from maskcd.models.selective_scan import selective_scan

DEFAULT_REFERENCE = (
    Path(__file__).resolve().parents[2]
    / "shared" / "reference_code" / "minenetcd" / "VMamba" / "classification" / "models" / "csms6s.py"
)


def load_reference(path: Path):
    if not path.is_file():
        print(
            f"selective_scan.py: error: VMamba's reference scan {path} is absent; pass --reference "
            f"path/to/VMamba/classification/models/csms6s.py (MzeroMiko/VMamba, MIT) or --skip-reference",
            file=sys.stderr,
        )
        raise SystemExit(2)
    spec = importlib.util.spec_from_file_location("_vmamba_upstream_csms6s", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module.selective_scan_torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, seconds: float, min_runs: int = 2) -> float:
    fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - start < seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - start) / n


def best_of_interleaved(fns: dict, device: torch.device, rounds: dict) -> dict:
    """Best wall-clock and best thread CPU time of each function, the functions taking turns (same machine load).

    ``rounds[name]`` runs of each, after one warm-up; on a shared machine the minimum is the least disturbed run,
    and the thread CPU time (meaningful with one intra-op thread) excludes time spent waiting for a core.
    """
    for fn in fns.values():
        fn()
    sync(device)
    wall = {name: math.inf for name in fns}
    cpu = dict(wall)
    for i in range(max(rounds.values())):
        for name, fn in fns.items():
            if i >= rounds[name]:
                continue
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            sync(device)
            wall[name] = min(wall[name], time.perf_counter() - w0)
            cpu[name] = min(cpu[name], time.thread_time() - c0)
    return dict(wall=wall, cpu=cpu)


def record_scans(model, size: int, device: torch.device) -> list[tuple]:
    """The arguments of every selective scan in one backbone pass over a ``size``² image."""
    calls = []
    original = vmamba.selective_scan

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    vmamba.selective_scan = recorder
    try:
        with torch.inference_mode():
            model.backbone(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device))
    finally:
        vmamba.selective_scan = original
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="runs of our scan per shape (best of)")
    parser.add_argument("--reference-rounds", type=int, default=3, help="runs of the reference per shape (best of)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--skip-reference", action="store_true", help="time only our scan and the model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reference = None if args.skip_reference else load_reference(args.reference)
    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):
        model = build_model("minenetcd-vmamba-t").eval().to(device)
    calls = record_scans(model, args.size, device)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}; "
          f"{len(calls)} scans of one VMamba-T backbone pass at {args.size}²")
    header = ("L", 5), ("channels", 9), ("ours ms", 9), ("reference ms", 13), ("speed-up", 9), ("max|diff|", 10)
    print(" ".join(f"{name:>{width}}" for name, width in (*header, ("max|y|", 8), ("cpu-time x", 9))))
    rows, seen = [], {}
    for call_args, kwargs in calls:
        u, delta, A, B, C, D, bias = call_args
        key = tuple(u.shape)
        if key in seen:  # same shapes within a stage: time once, count per block
            seen[key]["blocks"] += 1
            continue
        with torch.inference_mode():
            ours_y = selective_scan(*call_args, **kwargs)
            fns = dict(ours=lambda: selective_scan(*call_args, **kwargs))
            if device.type == "cuda":
                fns["torch_backend"] = lambda: selective_scan(*call_args, **kwargs, backend="torch")
            if reference is not None:
                fns["reference"] = lambda: reference(u, delta, A, B, C, D, bias, True)
            times = best_of_interleaved(
                fns, device, dict(ours=args.rounds, torch_backend=args.rounds, reference=args.reference_rounds)
            )
            t_ours = times["wall"]["ours"]
            row = dict(L=u.shape[-1], channels=u.shape[1], blocks=1, ours_s=t_ours, ours_cpu_s=times["cpu"]["ours"])
            if "torch_backend" in fns:
                torch_y = selective_scan(*call_args, **kwargs, backend="torch")
                row.update(torch_backend_s=times["wall"]["torch_backend"],
                           torch_backend_max_abs_diff=(ours_y - torch_y).abs().max().item())
            if reference is not None:
                ref_y = reference(u, delta, A, B, C, D, bias, True)
                row.update(reference_s=times["wall"]["reference"], reference_cpu_s=times["cpu"]["reference"],
                           max_abs_diff=(ours_y - ref_y).abs().max().item(), max_abs_y=ref_y.abs().max().item())
        seen[key] = row
        rows.append(row)
        ref_txt = (f"{row['reference_s'] * 1e3:13.1f} {row['reference_s'] / t_ours:8.1f}x "
                   f"{row['max_abs_diff']:10.2e} {row['max_abs_y']:8.2f} "
                   f"{row['reference_cpu_s'] / row['ours_cpu_s']:8.1f}x") if reference is not None else ""
        torch_txt = (f"  (PyTorch scan {row['torch_backend_s'] * 1e3:.2f} ms, Triton "
                     f"{row['torch_backend_s'] / t_ours:.1f}x as fast, max|diff| "
                     f"{row['torch_backend_max_abs_diff']:.1e})") if "torch_backend_s" in row else ""
        print(f"{row['L']:5d} {row['channels']:9d} {t_ours * 1e3:9.1f} {ref_txt}{torch_txt}")
    total_ours = sum(r["ours_s"] * r["blocks"] for r in rows)
    result = dict(device=str(device), threads=torch.get_num_threads(), size=args.size, scans=rows,
                  backbone_scans_ours_s=total_ours)
    if device.type == "cuda":
        total_torch = sum(r["torch_backend_s"] * r["blocks"] for r in rows)
        result.update(backbone_scans_torch_backend_s=total_torch, triton_speedup=total_torch / total_ours)
        print(f"all scans, PyTorch scan on {device}: {total_torch * 1e3:.2f} ms; the Triton kernel "
              f"{total_torch / total_ours:.1f}x faster")
    if reference is not None:
        total_ref = sum(r["reference_s"] * r["blocks"] for r in rows)
        cpu_ours = sum(r["ours_cpu_s"] * r["blocks"] for r in rows)
        cpu_ref = sum(r["reference_cpu_s"] * r["blocks"] for r in rows)
        result.update(backbone_scans_reference_s=total_ref, speedup=total_ref / total_ours,
                      backbone_scans_ours_cpu_s=cpu_ours, backbone_scans_reference_cpu_s=cpu_ref,
                      speedup_cpu_time=cpu_ref / cpu_ours,
                      max_rel_diff=max(r["max_abs_diff"] / max(1.0, r["max_abs_y"]) for r in rows))
        print(f"all scans of one backbone pass: ours {total_ours * 1e3:.1f} ms, reference {total_ref * 1e3:.1f} ms "
              f"-> {total_ref / total_ours:.1f}x faster; max |diff| / max(1, |y|) {result['max_rel_diff']:.1e}")
        print(f"thread CPU time (best runs): ours {cpu_ours * 1e3:.1f} ms, reference {cpu_ref * 1e3:.1f} ms "
              f"-> {cpu_ref / cpu_ours:.1f}x")
    else:
        print(f"all scans of one backbone pass: ours {total_ours * 1e3:.1f} ms")
    a = torch.randn(1, 3, args.size, args.size, device=device)
    b = torch.randn(1, 3, args.size, args.size, device=device)

    def forward():
        with torch.inference_mode():
            return model(a, b).change_prob

    per_pair = timed(forward, device, args.seconds)
    result["minenetcd_vmamba_t_forward_s_per_pair"] = per_pair
    print(f"minenetcd-vmamba-t forward, one {args.size}² pair (batch 1): {per_pair * 1e3:.0f} ms")
    if device.type == "cuda":  # the same forward with the PyTorch scan
        vmamba.selective_scan = functools.partial(selective_scan, backend="torch")
        try:
            per_pair_torch = timed(forward, device, args.seconds)
        finally:
            vmamba.selective_scan = selective_scan
        result["minenetcd_vmamba_t_forward_torch_scan_s_per_pair"] = per_pair_torch
        print(f"  the same with the PyTorch scan: {per_pair_torch * 1e3:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
