"""Fixtures of the batch tests: a seeded tiny model saved to disk, seeded scenes and catalogs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ORIGIN = (512000.0, 5_112_000.0)
SIZE = 96


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """``maskcd-tiny`` with seeded random weights saved as safetensors, so every Dask worker loads the same weights.

    The weights are perturbed by N(0, 0.1) noise (seeded): the freshly initialised tiny model gives an almost constant
    probability (one polygon or none), the perturbed one a spatially varying map (about 0.07–0.47 on the synthetic
    scenes), so threshold 0.25 yields tens of polygons per site to compare between runs.
    """
    from maskcd.models import build_model

    folder = tmp_path_factory.mktemp("tiny-model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("maskcd-tiny").eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return str(folder)


def write_image(path: Path, array: np.ndarray, origin=ORIGIN, crs: str = "EPSG:32633", res: float = 1.0) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    array = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs=crs, transform=from_origin(*origin, res, res)) as dst:
        dst.write(array)
    return path


def scene_images(folder: Path, seed: int, n_dates: int = 2, size: int = SIZE, origin=ORIGIN) -> list[Path]:
    """``n_dates`` seeded synthetic mining-site images of one place (UTM 33N, 1 m), named ``<seed>_<i>.tif``."""
    from maskcd.data.synthetic import render_pair

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    before, after, _ = render_pair(rng, size)
    images = [before, after]
    while len(images) < n_dates:
        _, later, _ = render_pair(np.random.default_rng(seed * 100 + len(images)), size)
        images.append(later)
    return [write_image(folder / f"s{seed}_{i}.tif", img.transpose(2, 0, 1), origin=origin)
            for i, img in enumerate(images[:n_dates])]


@pytest.fixture(scope="session")
def make_scene():
    """:func:`scene_images` as a fixture."""
    return scene_images


@pytest.fixture(scope="session")
def image_writer():
    """:func:`write_image` as a fixture."""
    return write_image


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Input images shared by the batch tests: sites ``a``, ``b``, ``c`` (two dates each) and ``ts`` (three dates)."""
    root = tmp_path_factory.mktemp("scenes")
    data = {}
    for i, site in enumerate(("a", "b", "c")):
        data[site] = scene_images(root / "img", seed=10 + i, origin=(ORIGIN[0] + 1000 * i, ORIGIN[1]))
    data["ts"] = scene_images(root / "img", seed=20, n_dates=3)
    data["root"] = root
    return data


def write_pairs_catalog(path: Path, rows: list[tuple[str, str, str]], dates=("2021-06-15", "2023-07-02")) -> Path:
    lines = ["site_id,before,after,before_date,after_date"]
    lines += [f"{sid},{os.path.relpath(b, path.parent)},{os.path.relpath(a, path.parent)},{dates[0]},{dates[1]}"
              for sid, b, a in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def pairs_catalog():
    """:func:`write_pairs_catalog` as a fixture."""
    return write_pairs_catalog
