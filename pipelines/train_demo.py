"""Train the demo checkpoint ``maskcd/weights/demo`` on synthetic mining-site pairs, on CPU, in about 20 minutes.

    HF_HUB_OFFLINE=1 .venv/bin/python pipelines/train_demo.py --output maskcd/weights/demo

What it does:

* renders ``--scenes`` synthetic 256² scenes (:mod:`maskcd.data.synthetic`, seeds ``[TRAIN_SEED, i]``: a different
  seed stream from ``make_scene_pair(seed=int)``, so every demo pair made from an integer seed is unseen) and keeps
  them in memory;
* trains the ``maskcd-demo`` preset on random 128² crops with identical flips/90° rotations on both dates and the label
  plus per-date radiometric jitter (AdamW, linear warm-up then cosine decay per step, gradient clipping);
* every ``--eval-every`` steps maps a whole held-out 512² scene (``make_scene_pair(seed=VAL_SEED)``) with a sliding
  window and keeps the checkpoint with the best F1 (written to a temporary folder, then renamed);
* finally maps fresh test scenes (integer seeds ``--test-seeds``) and writes ``metrics.jsonl`` lines plus the
  ``training.json`` summary next to the log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from maskcd.data.augment import paired_geometric, radiometric_jitter  # noqa: E402
from maskcd.data.synthetic import make_scene_pair, render_pair  # noqa: E402
from maskcd.evaluation.scene import evaluate_scene  # noqa: E402
from maskcd.models import build_model  # noqa: E402

TRAIN_SEED = 20_240_611
VAL_SEED = 777


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="maskcd/weights/demo", help="checkpoint folder to write (replaced at the end)")
    p.add_argument("--log-dir", default="exp/demo", help="folder for metrics.jsonl and training.json")
    p.add_argument("--model", default="maskcd-demo")
    p.add_argument("--scenes", type=int, default=160)
    p.add_argument("--scene-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=22.0, help="stop training after this wall time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-seeds", type=int, nargs="*", default=[1, 2, 3, 2026])
    return p.parse_args(argv)


def save_atomic(model, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    jsonl = open(log_dir / "metrics.jsonl", "a")

    def log(record: dict) -> None:
        record["time_s"] = round(time.time() - t0, 1)
        print(json.dumps(record), flush=True)
        jsonl.write(json.dumps(record) + "\n")
        jsonl.flush()

    t0 = time.time()
    scenes = [render_pair(np.random.default_rng([TRAIN_SEED, i]), args.scene_size) for i in range(args.scenes)]
    A = torch.from_numpy(np.stack([s[0] for s in scenes]).transpose(0, 3, 1, 2).copy())
    B = torch.from_numpy(np.stack([s[1] for s in scenes]).transpose(0, 3, 1, 2).copy())
    L = torch.from_numpy(np.stack([s[2] for s in scenes]).astype(np.int64))
    del scenes
    log({"event": "data", "scenes": args.scenes, "changed_fraction": float(L.float().mean())})
    val_dir = Path(tempfile.mkdtemp(prefix="maskcd-demo-val-"))
    val = make_scene_pair(val_dir, seed=VAL_SEED, size=512)

    model = build_model(args.model)
    spec = model.inference_spec
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    best_f1, best_step, running, seen = -1.0, -1, 0.0, 0
    tick = time.time()
    out = Path(args.output)
    best_dir = log_dir / "best"
    c = args.crop
    for step in range(args.steps):
        idx = torch.randint(0, A.shape[0], (args.batch_size,), generator=gen)
        offs = torch.randint(0, args.scene_size - c + 1, (args.batch_size, 2), generator=gen)
        batch_a, batch_b, batch_l = [], [], []
        for i, (y, x) in zip(idx.tolist(), offs.tolist()):
            a, b, lab = paired_geometric(A[i, :, y : y + c, x : x + c], B[i, :, y : y + c, x : x + c],
                                         L[i, y : y + c, x : x + c], gen)
            batch_a.append(spec.normalize(radiometric_jitter(a, gen, 0.1)))
            batch_b.append(spec.normalize(radiometric_jitter(b, gen, 0.1)))
            batch_l.append(lab)
        loss = model(torch.stack(batch_a), torch.stack(batch_b), labels=torch.stack(batch_l)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        seen += args.batch_size
        last = step + 1 == args.steps or (time.time() - t0) / 60 > args.max_minutes
        if (step + 1) % 20 == 0 or last:
            log({"step": step + 1, "loss": round(running / 20, 4), "lr": scheduler.get_last_lr()[0],
                 "pairs_per_s": round(seen / (time.time() - tick), 2)})
            running, seen, tick = 0.0, 0, time.time()
        if (step + 1) % args.eval_every == 0 or last:
            metrics, _ = evaluate_scene(model, val["before"], val["after"], val["truth"])
            model.train()
            if metrics["f1"] > best_f1:
                best_f1, best_step = metrics["f1"], step + 1
                save_atomic(model, best_dir)
            log({"step": step + 1, "val_f1": round(metrics["f1"], 4), "val_iou": round(metrics["iou"], 4),
                 "best_f1": round(best_f1, 4), "best_step": best_step})
        if last:
            break
    shutil.rmtree(val_dir, ignore_errors=True)

    from maskcd.models import load_model

    best = load_model(best_dir).eval()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.test_seeds:
            pair = make_scene_pair(tmp, seed=seed, size=1024)
            m, _ = evaluate_scene(best, pair["before"], pair["after"], pair["truth"])
            results[seed] = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
            log({"event": "test", "seed": seed, **results[seed]})
    save_atomic(best, out)
    summary = {"best_step": best_step, "val_f1": best_f1, "test": results, "minutes": (time.time() - t0) / 60,
               "args": vars(args), "train_seed": TRAIN_SEED, "val_seed": VAL_SEED}
    (log_dir / "training.json").write_text(json.dumps(summary, indent=2))
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    scores = ", ".join(f"{seed}: {r['f1']:.3f}" for seed, r in results.items())
    print(f"wrote {out} ({size_mb:.1f} MB); whole-scene test F1 by seed: {scores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
