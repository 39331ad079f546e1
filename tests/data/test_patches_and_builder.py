"""Patch datasets (HF DatasetDict) and the folder/scene builders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskcd.data.builder import build_from_folders, build_from_scenes
from maskcd.data.patches import PatchPairDataset, load_patch_dataset
from maskcd.data.scenes import write_catalog
from maskcd.data.synthetic import make_scene_pair
from maskcd.errors import InputError
from maskcd.models.base import InferenceSpec


def _folder(root: Path, names: list[str], size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / "A" / name)
        Image.fromarray(255 - a).save(root / "B" / name)
        lab = np.zeros((size, size), np.uint8)
        lab[: size // 2, : size // 4] = 255  # asymmetric, so any flip/rotation is visible
        Image.fromarray(lab).save(root / "label" / Path(name).with_suffix(".png"))
    return root


def test_folders_build_split_by_prefix_or_fraction_and_save(tmp_path):
    pre = _folder(tmp_path / "pre", ["train_1.png", "train_2.png", "val_1.png", "test_1.png"])
    flat = _folder(tmp_path / "flat", [f"{i}.png" for i in range(10)], seed=1)
    dsd = build_from_folders([pre, flat], val_fraction=0.2, test_fraction=0.3, seed=0)
    assert {s: len(d) for s, d in dsd.items()} == {"train": 2 + 5, "val": 1 + 2, "test": 1 + 3}
    names = [n for d in dsd.values() for n in d["name"]]
    assert len(names) == len(set(names)) == 14
    dsd.save_to_disk(str(tmp_path / "saved"))
    again = load_patch_dataset(tmp_path / "saved")
    row = again["val"][0]
    assert row["label"].mode == "L" and set(np.unique(np.asarray(row["label"]))) <= {0, 255}


def test_folder_columns_must_pair_up(tmp_path):
    root = _folder(tmp_path / "bad", ["a.png", "b.png"])
    os.remove(root / "B" / "b.png")
    Image.new("RGB", (32, 32)).save(root / "B" / "c.png")
    with pytest.raises(InputError, match="do not pair up"):
        build_from_folders([root])


def test_hub_id_offline_and_bad_folder_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match="local folder"):
        load_patch_dataset("nobody-xyz/not-cached-cd")
    with pytest.raises(InputError, match="dataset_dict.json"):
        load_patch_dataset(tmp_path)


def test_augmentation_is_identical_on_both_dates_and_label(tmp_path):
    root = tmp_path / "same"
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    pattern = np.zeros((32, 32), np.uint8)
    pattern[2:20, 3:9] = 255
    pattern[25, 1:30] = 255
    for name in ("train_0.png", "val_0.png", "test_0.png"):
        Image.fromarray(np.stack([pattern] * 3, -1)).save(root / "A" / name)
        Image.fromarray(np.stack([pattern] * 3, -1)).save(root / "B" / name)
        Image.fromarray(pattern).save(root / "label" / name)
    split = build_from_folders([root])["train"]
    spec = InferenceSpec(image_mean=(0, 0, 0), image_std=(1, 1, 1))
    ds = PatchPairDataset(split, spec, augment=True, seed=3)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        a, b, lab = item["image_a"], item["image_b"], item["label"]
        assert torch.equal(a, b) and torch.equal((a[0] > 0.5).long(), lab)
        seen.add(lab.numpy().tobytes())
        ds.set_epoch(epoch)
        assert torch.equal(ds[0]["label"], lab)  # same seed + epoch + index -> same transform
    assert len(seen) >= 3  # the transforms do vary between epochs
    jit = PatchPairDataset(split, spec, augment=True, jitter=0.2, seed=3)
    item = jit[0]
    assert not torch.equal(item["image_a"], item["image_b"])  # per-date radiometry differs...
    assert torch.equal((item["image_a"][0] > 0.5), (item["image_b"][0] > 0.5))  # ...geometry does not


def test_scene_tiles_are_split_by_site_never_by_tile(tmp_path):
    sites = []
    for i in range(4):
        pair = make_scene_pair(tmp_path / f"s{i}", seed=100 + i, size=96, origin=(400000.0 + 5000 * i, 5100000.0))
        sites.append({"name": f"site{i}", "before": pair["before"], "after": pair["after"], "label": pair["truth"]})
    sites[0]["split"] = "test"
    catalog = write_catalog(tmp_path / "catalog.yaml", sites)
    dsd, splits = build_from_scenes(catalog, tile=48, stride=48, val_fraction=0.25, test_fraction=0.25, seed=0)
    # the CLI writes the same tiles with save_to_disk
    from maskcd.cli.dataset import main

    out = tmp_path / "scenes_ds"
    assert main(["scenes", str(catalog), "-o", str(out), "--tile", "48", "--val-fraction", "0.25",
                 "--test-fraction", "0.25"]) == 0
    saved = load_patch_dataset(out)
    assert {k: sorted(v["name"]) for k, v in saved.items()} == {k: sorted(v["name"]) for k, v in dsd.items()}
    assert splits["site0"] == "test" and set(splits.values()) == {"train", "val", "test"}
    by_split = {s: set(d["source"]) for s, d in dsd.items()}
    for s, d in dsd.items():
        assert by_split[s] == {n for n, v in splits.items() if v == s}
    assert sum(len(d) for d in dsd.values()) == 4 * 4  # 2x2 tiles of 48 px per 96 px site
    row = dsd["train"][0]
    assert row["imageA"].size == (48, 48) and set(np.unique(np.asarray(row["label"]))) <= {0, 255}


def test_batches_of_mixed_patch_sizes_give_a_clear_error():
    from maskcd.data.patches import collate

    items = [{"image_a": torch.zeros(3, 8, 8), "key": "a"}, {"image_a": torch.zeros(3, 8, 9), "key": "b"}]
    with pytest.raises(InputError, match="--batch-size 1"):
        collate(items)
    assert collate(items[:1])["key"] == ["a"]


def test_push_to_hub_offline_keeps_the_local_copy_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    from maskcd.cli.dataset import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _folder(tmp_path / "src", ["train_1.png", "val_1.png", "test_1.png"])
    out = tmp_path / "out"
    assert main(["folders", str(root), "-o", str(out), "--push-to-hub", "nobody-xyz/cd"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("maskcd-dataset:")]
    assert len(err) == 1 and "pushing to nobody-xyz/cd failed" in err[0]  # (progress bars aside)
    assert len(load_patch_dataset(out)["train"]) == 1
