"""Split evaluation that is exact over processes: each rank scores a disjoint shard, the counts are summed.

Rank ``r`` of ``W`` takes items ``r, r + W, r + 2W, ...`` (no padding, so no sample is counted twice, unlike a
prepared DataLoader with ``even_batches``); :class:`~maskcd.evaluation.metrics.ChangeMetrics` counts are reduced with
``accelerator.reduce(counts, "sum")`` and the metrics are computed once from the totals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from maskcd.data.patches import collate
from maskcd.evaluation.metrics import ChangeMetrics


@torch.no_grad()
def evaluate(model, dataset, accelerator, batch_size: int = 8, threshold: float = 0.5, objects: bool = True,
             maps_dir: str | Path | None = None, num_workers: int = 0, progress: bool = False) -> dict:
    """Change metrics of ``model`` on ``dataset`` summed over every process.

    Args:
        model: The (unwrapped or prepared) model.
        dataset: Items with ``image_a``, ``image_b``, ``label``, ``key``.
        accelerator: The ``accelerate.Accelerator``.
        maps_dir: Write each prediction as a 0/255 PNG ``<key>.png`` here.

    Returns:
        The metrics dict plus ``num_processes`` and ``num_items``.
    """
    from tqdm.auto import tqdm

    shard = Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    metrics = ChangeMetrics(objects=objects)
    was_training = model.training
    model.eval()
    if maps_dir is not None:
        maps_dir = Path(maps_dir)
        maps_dir.mkdir(parents=True, exist_ok=True)
    for batch in tqdm(loader, desc="evaluate", disable=not (progress and accelerator.is_local_main_process)):
        with accelerator.autocast():
            out = model(batch["image_a"].to(accelerator.device), batch["image_b"].to(accelerator.device))
        pred = (out.change_prob.float() >= threshold).long().cpu()
        metrics.update(pred, batch["label"])
        if maps_dir is not None:
            from PIL import Image

            for key, p in zip(batch["key"], pred.numpy()):
                Image.fromarray((p * 255).astype(np.uint8), mode="L").save(maps_dir / f"{key}.png")
    if was_training:
        model.train()
    counts = torch.cat([metrics.counts, torch.tensor([float(len(shard))], dtype=torch.float64)])
    total = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    result = metrics.compute(total[:-1])
    result["num_items"] = int(total[-1])
    result["num_processes"] = accelerator.num_processes
    return result
