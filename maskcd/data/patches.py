"""Patch datasets: the Hugging Face ``DatasetDict`` format the MaskCD authors publish
their datasets in (github.com/EricYu97/MaskCD).

Splits ``train``/``val``/``test``; columns ``imageA`` (before), ``imageB`` (after) and ``label`` (single-channel, 0 = no
change, 255 = change), all ``datasets.Image``. :func:`load_patch_dataset` opens a ``save_to_disk`` folder or a Hub id;
:class:`PatchPairDataset` turns one split into normalised tensors with optional paired augmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from maskcd.data.augment import paired_geometric, radiometric_jitter
from maskcd.errors import InputError

COLUMNS = ("imageA", "imageB", "label")


def _check_columns(dsd, source: str):
    for split, ds in dsd.items():
        missing = [c for c in COLUMNS if c not in ds.column_names]
        if missing:
            raise InputError(f"dataset {source}: split {split!r} lacks columns {missing} (needs imageA, imageB, label)")
    return dsd


def load_patch_dataset(source: str | os.PathLike):
    """Open a patch ``DatasetDict`` from a local ``save_to_disk`` folder or a Hub id.

    Raises:
        InputError: the folder is not a saved dataset, or the Hub id is not cached and the Hub is unreachable/offline
            (the message says to pass a local folder).
    """
    import datasets

    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "dataset_dict.json").is_file():
            raise InputError(
                f"{path} is not a saved DatasetDict (no dataset_dict.json): build one with `maskcd-dataset folders "
                f"{path} -o OUT` or pass a folder written by save_to_disk"
            )
        return _check_columns(datasets.load_from_disk(str(path)), text)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "/", "~")):
        raise InputError(f"dataset {text!r} is neither an existing folder nor a Hub id (owner/name)")
    try:
        dsd = datasets.load_dataset(text)
    except Exception as err:  # offline: ConnectionError / DatasetNotFoundError / LocalEntryNotFoundError ...
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise InputError(
            f"dataset {text!r} could not be loaded from the Hub{' (HF_HUB_OFFLINE=1)' if offline else ''} and is not "
            f"in the local cache ({type(err).__name__}): pass a local folder saved with save_to_disk / maskcd-dataset "
            f"instead"
        ) from err
    return _check_columns(dsd, text)


def _to_array(image, mode: str) -> np.ndarray:
    if hasattr(image, "convert"):
        image = image.convert(mode)
    return np.asarray(image)


class PatchPairDataset(Dataset):
    """One split of a patch ``DatasetDict`` as normalised tensors.

    Args:
        split: A ``datasets.Dataset`` with ``imageA``, ``imageB``, ``label``.
        spec: The model's :class:`~maskcd.models.base.InferenceSpec` (value scale, mean, std).
        augment: Random flips / 90° rotations, identical on both dates and the label.
        jitter: Per-date radiometric jitter strength (0 = off; only with ``augment``).
        crop: Random crop size when augmenting, centre crop otherwise (``None`` = full patch).
        seed: Seed; with :meth:`set_epoch`, item ``i`` of epoch ``e`` is always transformed the same way.

    Items: ``image_a``, ``image_b`` float ``(C, H, W)``; ``label`` int64 ``(H, W)`` with 1 where the stored label is
    > 127 (0/255 storage); ``key`` (the ``name`` column, else the zero-padded row number).
    """

    def __init__(self, split, spec, augment: bool = False, jitter: float = 0.0, crop: int | None = None,
                 seed: int = 0):
        self.split, self.spec, self.augment, self.jitter, self.crop, self.seed = split, spec, augment, jitter, crop, seed
        self.mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(spec.num_bands)
        if self.mode is None:
            raise InputError(f"PNG/JPEG patch datasets carry 1, 3 or 4 bands; the model expects {spec.num_bands}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        row = self.split[int(index)]
        a = torch.from_numpy(_to_array(row["imageA"], self.mode).copy())
        b = torch.from_numpy(_to_array(row["imageB"], self.mode).copy())
        lab = _to_array(row["label"], "L")
        if a.shape != b.shape or a.shape[:2] != lab.shape:
            raise InputError(f"row {index}: imageA {tuple(a.shape)}, imageB {tuple(b.shape)} and label "
                             f"{lab.shape} differ in size")
        if a.dim() == 2:
            a, b = a[..., None], b[..., None]
        a, b = a.permute(2, 0, 1), b.permute(2, 0, 1)
        label = torch.from_numpy((lab > 127).astype(np.int64))
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(index))) % (2**62))
        if self.crop and self.crop < label.shape[-1]:
            h, w = label.shape
            c = self.crop
            if self.augment:
                y = int(torch.randint(0, h - c + 1, (1,), generator=gen))
                x = int(torch.randint(0, w - c + 1, (1,), generator=gen))
            else:
                y, x = (h - c) // 2, (w - c) // 2
            a, b, label = a[:, y : y + c, x : x + c], b[:, y : y + c, x : x + c], label[y : y + c, x : x + c]
        if self.augment:
            a, b, label = paired_geometric(a, b, label, gen)
            if self.jitter:
                a = radiometric_jitter(a, gen, self.jitter, self.spec.value_scale)
                b = radiometric_jitter(b, gen, self.jitter, self.spec.value_scale)
        key = row.get("name") or f"{int(index):06d}"
        return {"image_a": self.spec.normalize(a), "image_b": self.spec.normalize(b), "label": label, "key": str(key)}


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep other values as lists; patches of different sizes in one batch are an :class:`InputError`."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise InputError(f"a batch mixes {key} sizes {sorted(shapes)}: use --batch-size 1 (or --crop) for "
                                 f"datasets whose patches differ in size")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
