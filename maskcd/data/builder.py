"""Build patch ``DatasetDict``s: from A/B/label folders (the published creator layout) or from GeoTIFF scenes.

Folder layout (per root): either ``root/{A,B,label}`` or ``root/{train,val,test}/{A,B,label}``. As in the published
``datasets_creator.py`` each column is listed and sorted on its own and the label of ``x.jpg`` is ``x.png``; unlike
it, the three sorted lists are checked to pair up name by name (a missing file is an error, not a silent shift).

Splits of a flat root: by the name prefix when every name starts with ``train``/``val``/``test`` (e.g. LEVIR-CD and
EGY-BCD crops), otherwise a seeded shuffle cut by ``val_fraction``/``test_fraction``.

Scenes: each catalog site is tiled with TorchGeo's ``GridGeoSampler`` (tile size and stride in pixels) and every tile
of a site goes to the site's split, so no site leaks across splits. Labels are stored 0/255; pixels marked ignored in a
label raster are stored as 0 and tiles with more than half of their pixels ignored are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from maskcd.contract import IGNORE_INDEX
from maskcd.data.scenes import SPLITS, assign_splits, open_sites, read_catalog
from maskcd.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _features():
    import datasets

    return datasets.Features({
        "imageA": datasets.Image(), "imageB": datasets.Image(), "label": datasets.Image(),
        "name": datasets.Value("string"), "source": datasets.Value("string"),
    })


def _list(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder} does not exist: a dataset folder needs A/, B/ and label/ subfolders")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def pairs_in(folder: Path) -> list[tuple[Path, Path, Path]]:
    """Sorted (A, B, label) triples of one ``A/B/label`` folder, checked name by name."""
    a, b, lab = _list(folder / "A"), _list(folder / "B"), _list(folder / "label")
    if not a:
        raise InputError(f"{folder / 'A'} holds no images")
    if not (len(a) == len(b) == len(lab)):
        raise InputError(f"{folder}: A/ has {len(a)} images, B/ {len(b)}, label/ {len(lab)}: every pair needs all three")
    for pa, pb, pl in zip(a, b, lab):
        want_label = re.sub(r"\.jpe?g$", ".png", pa.name, flags=re.IGNORECASE)
        if pb.name != pa.name or pl.name != want_label:
            raise InputError(f"{folder}: sorted columns do not pair up at A/{pa.name}, B/{pb.name}, label/{pl.name}: "
                             f"use the same names (labels as .png)")
    return list(zip(a, b, lab))


def split_pairs(root: Path, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    """Pairs of one root by split (see the module docstring)."""
    root = Path(root)
    if any((root / s).is_dir() for s in SPLITS):
        return {s: pairs_in(root / s) if (root / s).is_dir() else [] for s in SPLITS}
    pairs = pairs_in(root)
    prefixes = [next((s for s in SPLITS if p[0].stem.lower().startswith(s)), None) for p in pairs]
    if all(prefixes):
        return {s: [p for p, q in zip(pairs, prefixes) if q == s] for s in SPLITS}
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val, n_test = int(round(len(pairs) * val_fraction)), int(round(len(pairs) * test_fraction))
    if len(pairs) >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    out = {"val": [], "test": [], "train": []}
    for rank, i in enumerate(order):
        out["val" if rank < n_val else "test" if rank < n_val + n_test else "train"].append(pairs[i])
    return out


def build_from_folders(roots: list[str | Path], val_fraction: float = 0.2, test_fraction: float = 0.2,
                       seed: int = 0):
    """A ``DatasetDict`` (train/val/test) from one or more A/B/label roots; ``source`` = the root's folder name."""
    import datasets

    rows = {s: [] for s in SPLITS}
    for root in roots:
        root = Path(root)
        for split, pairs in split_pairs(root, val_fraction, test_fraction, seed).items():
            for a, b, lab in pairs:
                rows[split].append({"imageA": str(a), "imageB": str(b), "label": str(lab), "name": f"{root.name}_{a.stem}",
                                    "source": root.name})
    return _to_dataset_dict(rows, datasets)


def _to_dataset_dict(rows: dict[str, list[dict]], datasets):
    empty = [s for s in SPLITS if not rows[s]]
    if empty:
        raise InputError(f"splits {empty} would be empty: add data or change --val-fraction/--test-fraction")
    feats = _features()
    return datasets.DatasetDict({
        s: datasets.Dataset.from_dict({k: [r[k] for r in rows[s]] for k in feats}, features=feats) for s in SPLITS
    })


def build_from_scenes(catalog: str | Path, tile: int = 256, stride: int | None = None, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0):
    """A ``DatasetDict`` of tiles cut from the GeoTIFF scenes of a catalog, split by site.

    Returns:
        ``(dataset_dict, {site: split})``.
    """
    import datasets
    from PIL import Image

    sites = read_catalog(catalog)
    splits = assign_splits(sites, val_fraction, test_fraction, seed)
    rows = {s: [] for s in SPLITS}
    for data in open_sites(sites):
        if not data.chip_fits(tile):
            raise InputError(f"site {data.name!r} is smaller than one {tile}-pixel tile: lower --tile")
        for q in data.grid_queries(tile, stride or tile):
            sample = data.read(q)
            label = sample["label"].numpy()
            if (label == IGNORE_INDEX).mean() > 0.5:
                continue
            imgs = []
            for key in ("image_a", "image_b"):
                arr = sample[key].numpy()
                if arr.shape[0] not in (1, 3):
                    raise InputError(f"site {data.name!r}: {arr.shape[0]} bands cannot be stored as PNG (1 or 3)")
                arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
                imgs.append(Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)))
            mask = Image.fromarray(np.where(label == 1, 255, 0).astype(np.uint8), mode="L")
            rows[splits[data.name]].append({
                "imageA": imgs[0], "imageB": imgs[1], "label": mask, "source": data.name,
                "name": f"{data.name}_{q[0].start:.2f}_{q[1].start:.2f}",
            })
    return _to_dataset_dict(rows, datasets), splits
