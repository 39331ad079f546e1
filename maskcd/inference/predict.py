"""Batched window inference with accelerate (pipeline stage 3).

* ``accelerate`` places the model and batches on the device and, under ``accelerate launch``, shards the windows over
  processes: each rank gets its own batches with ``even_batches=False`` so no window is duplicated (the default pads
  the last batches by looping back to the start, which would double-count windows in the blend).
* ``torch.inference_mode()``; bf16 autocast on GPU.
* No host synchronisation in the hot loop: each batch's probabilities are copied to the host with a non-blocking copy
  and written to the :class:`~maskcd.inference.store.TileStore` one batch later, after the next forward is queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from maskcd.errors import InputError, MaskCDError
from maskcd.inference.dataset import WindowDataset, collate_list, collate_windows
from maskcd.inference.store import TileStore
from maskcd.workers import die_with_parent

logger = logging.getLogger(__name__)


def make_accelerator(device: str = "auto", bf16: bool | None = None):
    """An :class:`accelerate.Accelerator` for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    ``bf16=None`` means bf16 autocast when running on CUDA.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    want_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; pass --device cpu")
        if ":" in device and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.cuda.set_device(int(device.split(":", 1)[1]))
    use_bf16 = (not want_cpu) if bf16 is None else bool(bf16)
    kwargs = dict(
        cpu=want_cpu,
        mixed_precision="bf16" if use_bf16 and not want_cpu else "no",
        dataloader_config=DataLoaderConfiguration(even_batches=False, split_batches=False, non_blocking=True),
    )
    try:
        return Accelerator(**kwargs)
    except ValueError:
        # a previous run in this process configured the singleton state differently (e.g. maskcd-batch, tests)
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def _flush(pending, store: TileStore, windows) -> None:
    host, indices, valids, event = pending
    if event is not None:
        event.synchronize()
    arr = host.numpy()
    for k, (i, valid) in enumerate(zip(indices, valids)):
        w = windows[i]
        p = arr[k, : w.height, : w.width].astype(np.float16)
        p[~valid] = np.nan
        store.write(i, p)


@contextlib.contextmanager
def _worker_errors():
    """Re-raise a :class:`MaskCDError` from a DataLoader worker with its own one-line message (not the wrapper's)."""
    try:
        yield
    except MaskCDError as err:
        text = str(err)
        if "Original Traceback" in text:
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            raise type(err)(last.split(": ", 1)[1] if ": " in last else last) from None
        raise


def predict_to_store(
    model: torch.nn.Module,
    dataset: WindowDataset,
    store: TileStore,
    accelerator,
    *,
    batch_size: int = 8,
    workers: int = 2,
    on_batch: Callable[[list[int]], None] | None = None,
) -> int:
    """Run the model over every window of ``dataset`` assigned to this rank and write the probabilities to ``store``.

    Returns:
        Number of windows this rank ran through the model (windows with < 5 % valid data are skipped).
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_list,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=die_with_parent() if workers > 0 else None,  # no orphaned readers if this process is killed
    )
    loader = accelerator.prepare_data_loader(loader, device_placement=True)
    device = accelerator.device
    model = model.to(device).eval()
    spec = dataset.pair.spec
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if accelerator.mixed_precision == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    pending = None
    done = 0
    empty = np.full((store.height, store.width), np.nan, np.float16)
    with torch.inference_mode(), _worker_errors():
        for items in loader:
            batch = collate_windows(items)  # stacked here, not in the workers (see collate_list)
            for i in batch["skipped"]:  # < 5 % valid: no forward; the slot says "no data" (the file is sparse zeros)
                store.write(i, empty)
            if batch["skipped"] and on_batch:
                on_batch(batch["skipped"])
            if not batch["index"]:
                continue
            image_a, image_b = spec.normalize(batch["image_a"]), spec.normalize(batch["image_b"])
            with autocast:
                prob = model(image_a, image_b).change_prob
            host = prob.detach().to(torch.float16).to("cpu", non_blocking=True)
            event = None
            if device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            if pending is not None:
                _flush(pending, store, dataset.windows)
                if on_batch:
                    on_batch(pending[1])
            pending = (host, batch["index"], batch["valid"], event)
            done += len(batch["index"])
        if pending is not None:
            _flush(pending, store, dataset.windows)
            if on_batch:
                on_batch(pending[1])
    return done
