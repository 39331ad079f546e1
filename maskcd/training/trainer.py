"""Training loop on ``accelerate``: the published MaskCD recipe (github.com/EricYu97/MaskCD) with its bugs fixed.

* Adam/AdamW, learning rate per process batch; cosine schedule (``eta_min`` = ``min_lr``) after a linear warm-up,
  stepped once per epoch (``lr_schedule: epoch``, warm-up ``warmup_epochs``) or once per optimizer step
  (``lr_schedule: step``, warm-up ``warmup_steps``, or ``warmup_epochs`` worth of steps), as transformers'
  ``get_cosine_schedule_with_warmup`` does (the published scripts step a ``T_max=100`` cosine every *iteration*).
* bf16 autocast on GPU (``accelerate`` mixed precision), gradient accumulation, gradient clipping, seed.
* Validation on the ``val`` split every ``val_every`` epochs (and after the last); F1 from TP/FP/FN summed over the
  split and all processes (:mod:`maskcd.training.evaluate`). ``best_f1/`` is written when F1 improves (the published
  script never updates its best F1) and ``last/`` after every epoch.
* A checkpoint folder = ``save_pretrained`` model (config.json with the inference spec + model.safetensors) +
  ``training_state.pt`` (optimizer, scheduler, epoch, best F1) saved with ``torch.save`` of plain state dicts and read
  back with ``torch.load(weights_only=True)``. ``resume`` continues at the epoch after the stored one.
* ``metrics.jsonl``: one JSON line per epoch (loss, lr, pairs/s, validation metrics when run).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from maskcd.data.patches import collate
from maskcd.errors import InputError, OutputExistsError
from maskcd.io.atomic import atomic_write
from maskcd.options import as_int, as_number, check_value
from maskcd.training.data import DataOptions, dataset_name, make_split
from maskcd.training.evaluate import evaluate

STATE_FILE = "training_state.pt"


OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("epoch", "step")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything ``maskcd-train`` can set (see ``maskcd-train --help``); ``--config`` YAML files use the same keys,
    with the :class:`~maskcd.training.data.DataOptions` fields (``crop``, ``jitter``...) at the same level.

    Raises:
        ConfigError: A value out of range or of the wrong kind (see :meth:`validate`).
    """

    dataset: str
    model: str = "maskcd-swin-t"
    output_dir: str | None = None
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    optimizer: str = "adam"
    epochs: int = 100
    warmup_epochs: int = 0
    lr_schedule: str = "epoch"
    warmup_steps: int = 0
    min_lr: float = 1e-7
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    mixed_precision: str = "auto"
    val_every: int = 5
    val_batch_size: int = 8
    seed: int = 0
    num_workers: int = 0
    resume: str | None = None
    overwrite: bool = False
    max_steps_per_epoch: int | None = None
    data: DataOptions = field(default_factory=DataOptions)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Check every value (in place; ``clip_grad`` 0 means off and becomes ``None``); returns ``self``.

        Raises:
            ConfigError: One line naming the option, the bad value and the allowed values.
        """
        for name in ("dataset", "model"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, str(value))
            check_value(isinstance(getattr(self, name), str) and getattr(self, name) != "", name, value,
                        "a folder, file, preset name or Hub id")
        for name, low in (("batch_size", 1), ("epochs", 1), ("grad_accum", 1), ("val_every", 1),
                          ("val_batch_size", 1), ("warmup_epochs", 0), ("warmup_steps", 0),
                          ("num_workers", 0)):
            setattr(self, name, as_int(getattr(self, name), name, f"an integer >= {low}"))
            check_value(getattr(self, name) >= low, name, getattr(self, name), f"an integer >= {low}")
        self.seed = as_int(self.seed, "seed", "an integer")
        if self.max_steps_per_epoch is not None:
            self.max_steps_per_epoch = as_int(self.max_steps_per_epoch, "max_steps_per_epoch", "an integer >= 1")
            check_value(self.max_steps_per_epoch >= 1, "max_steps_per_epoch", self.max_steps_per_epoch,
                        "an integer >= 1, or null")
        self.learning_rate = as_number(self.learning_rate, "learning_rate", "a positive number")
        check_value(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        for name in ("weight_decay", "min_lr"):
            setattr(self, name, as_number(getattr(self, name), name, "a number >= 0"))
            check_value(getattr(self, name) >= 0, name, getattr(self, name), "a number >= 0")
        if self.clip_grad is not None:
            self.clip_grad = as_number(self.clip_grad, "clip_grad", "a gradient norm >= 0 (0 or null: off)")
            check_value(self.clip_grad >= 0, "clip_grad", self.clip_grad, "a gradient norm >= 0 (0 or null: off)")
            self.clip_grad = self.clip_grad or None
        check_value(isinstance(self.optimizer, str) and self.optimizer.lower() in OPTIMIZERS, "optimizer",
                    self.optimizer, " | ".join(OPTIMIZERS))
        self.optimizer = self.optimizer.lower()
        check_value(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, " | ".join(LR_SCHEDULES))
        check_value(self.lr_schedule == "step" or self.warmup_steps == 0, "warmup_steps", self.warmup_steps,
                    "0 with lr_schedule epoch (use warmup_epochs, or lr_schedule step)")
        check_value(self.warmup_steps == 0 or self.warmup_epochs == 0, "warmup_steps", self.warmup_steps,
                    "0 when warmup_epochs is set (give the warm-up one way)")
        check_value(self.mixed_precision in MIXED_PRECISION, "mixed_precision", self.mixed_precision,
                    " | ".join(MIXED_PRECISION))
        if self.resume is not None:
            self.resume = str(self.resume)
        check_value(isinstance(self.overwrite, bool), "overwrite", self.overwrite, "true or false")
        check_value(self.output_dir is None or isinstance(self.output_dir, (str, os.PathLike)), "output_dir",
                    self.output_dir, "a folder path")
        self.data.validate()
        return self


POSTFIX_EVERY = 20
"""Training steps between progress-bar updates (each reads the loss back to the host)."""


def lr_factor(epoch: int, epochs: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based) out of ``epochs`` (epochs or optimizer steps, whichever the
    schedule counts): linear warm-up over ``warmup``, then cosine towards ``min_ratio`` (reached one past the last)."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    progress = min(1.0, (epoch - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate multiplier as a function of the schedule's counter (epochs for ``lr_schedule: epoch``,
    optimizer steps for ``step``, with ``steps_per_epoch`` optimizer steps in an epoch)."""
    min_ratio = min(1.0, cfg.min_lr / cfg.learning_rate)
    if cfg.lr_schedule == "step":
        total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
    else:
        total, warmup = cfg.epochs, cfg.warmup_epochs
    return lambda i: lr_factor(i, total, warmup, min_ratio)


def save_checkpoint(folder: Path, model, optimizer, scheduler, epoch: int, best_f1: float, metrics: dict | None):
    """Write a checkpoint folder atomically (:func:`maskcd.io.atomic.atomic_write`: a hidden temporary folder beside
    it, renamed into place, replacing the previous checkpoint only once the new one is complete)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder, overwrite=True) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                    "best_f1": best_f1}, tmp / STATE_FILE)
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))


def load_training_state(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{folder} has no {STATE_FILE}: --resume needs a last/ (or best_f1/) folder written by maskcd-train")
    return torch.load(path, map_location="cpu", weights_only=True)


def _output_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) if cfg.output_dir else Path("exp") / dataset_name(cfg.dataset)


def train(cfg: TrainConfig, accelerator=None) -> dict:
    """Run training; returns a summary (best F1, epochs run, output folder)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    from maskcd.models import load_model

    cfg.validate()
    if cfg.mixed_precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    else:
        precision = cfg.mixed_precision
    if accelerator is None:
        # every trainable parameter gets a gradient (tests/models/test_zoo.py checks it), so DDP needs no unused-search
        # cpu=True without a GPU: accelerate only sets up gloo ranks under torchrun when told it runs on CPU
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision,
                                  gradient_accumulation_steps=cfg.grad_accum,
                                  dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    set_seed(cfg.seed)
    out_dir = _output_dir(cfg)
    resume_dir = None
    if cfg.resume:
        resume_dir = out_dir / "last" if cfg.resume in ("1", "true", "last") else Path(cfg.resume)
        if not resume_dir.is_dir():
            raise InputError(f"--resume: {resume_dir} is not a folder (pass the last/ folder of an earlier run)")
    elif (out_dir / "last").exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out_dir} already holds a run: pass --resume {out_dir / 'last'} to continue it, "
                                f"--overwrite to start again, or another --output-dir")

    model = load_model(resume_dir or cfg.model)
    spec = model.inference_spec
    train_ds = make_split(cfg.dataset, "train", spec, cfg.data, train=True)
    val_ds = make_split(cfg.dataset, "val", spec, cfg.data, train=False)
    if len(train_ds) < 1:
        raise InputError(f"dataset {cfg.dataset}: the train split is empty")

    gen = torch.Generator().manual_seed(cfg.seed)
    # A trailing batch of a single pair breaks BatchNorm models (UperNet's 1x1 pooling branch): drop only that one.
    drop_last = cfg.batch_size > 1 and len(train_ds) % cfg.batch_size == 1
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, drop_last=drop_last,
                        num_workers=cfg.num_workers, generator=gen)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam  # checked by validate()
    optimizer = optimizer_cls(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # optimizer steps per epoch of this process's share of the loader; a plain LambdaLR (`accelerator.prepare` is not
    # given it), stepped exactly where this loop says: per optimizer step or per epoch
    batches = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, math.ceil(batches / cfg.grad_accum)))
    start_epoch, best_f1 = 0, -1.0
    if resume_dir is not None:
        state = load_training_state(resume_dir)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_f1 = int(state["epoch"]) + 1, float(state["best_f1"])

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_dir is None and (out_dir / "metrics.jsonl").exists():  # --overwrite: a fresh log
            (out_dir / "metrics.jsonl").unlink()
        (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log_path = out_dir / "metrics.jsonl"
    last_metrics = None
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_ds, "set_epoch"):  # per-epoch chips (scenes) / augmentation draws (patches)
            train_ds.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        model.train()
        # the loss sum stays on the device: the bar reads it back only every POSTFIX_EVERY steps (one host sync)
        total_loss, n_pairs, steps = torch.zeros((), device=accelerator.device), 0, 0
        tick = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = model(batch["image_a"], batch["image_b"], labels=batch["label"])
                loss = out.loss
                accelerator.backward(loss)
                if cfg.clip_grad and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cfg.lr_schedule == "step" and accelerator.sync_gradients:
                    scheduler.step()
            n = batch["image_a"].shape[0]
            total_loss += loss.detach().float() * n
            n_pairs += n
            steps += 1
            if steps % POSTFIX_EVERY == 1 or POSTFIX_EVERY == 1:
                rate = n_pairs * accelerator.num_processes / max(time.time() - tick, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", pairs_s=f"{rate:.1f}")
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
        elapsed = time.time() - tick
        # loss averaged over every pair of every process
        sums = accelerator.reduce(torch.stack([total_loss, torch.tensor(float(n_pairs), device=accelerator.device)]),
                                  "sum")
        total_loss, n_pairs = float(sums[0]), int(sums[1])
        lr = optimizer.param_groups[0]["lr"]  # per-step schedule: the rate the next step will use
        if cfg.lr_schedule == "epoch":
            scheduler.step()
        record = {"epoch": epoch, "loss": total_loss / max(n_pairs, 1), "lr": lr, "pairs": n_pairs,
                  "pairs_per_s": n_pairs / max(elapsed, 1e-9), "seconds": elapsed}
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            val = evaluate(accelerator.unwrap_model(model), val_ds, accelerator, batch_size=cfg.val_batch_size,
                           objects=False)
            record["val"] = val
            if val["f1"] > best_f1:
                best_f1 = val["f1"]
                if accelerator.is_main_process:
                    save_checkpoint(out_dir / "best_f1", accelerator.unwrap_model(model), optimizer, scheduler,
                                    epoch, best_f1, record)
        record["best_f1"] = best_f1
        if accelerator.is_main_process:
            save_checkpoint(out_dir / "last", accelerator.unwrap_model(model), optimizer, scheduler, epoch, best_f1,
                            record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            accelerator.print(json.dumps({k: v for k, v in record.items() if k != "val"}
                                         | ({"val_f1": record["val"]["f1"]} if "val" in record else {})))
        last_metrics = record
        accelerator.wait_for_everyone()
    return {"output_dir": str(out_dir), "best_f1": best_f1, "start_epoch": start_epoch, "last": last_metrics}
