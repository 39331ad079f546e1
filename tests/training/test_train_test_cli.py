"""maskcd-dataset -> maskcd-train -> maskcd-test on the real samples; metrics recomputed by hand; 2 ranks == 1 rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from maskcd.models import load_model

from tests.conftest import HANG_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]


def test_dataset_cli_builds_dataset_dict_from_three_sources(patch_dataset, capsys):
    from maskcd.cli.dataset import main

    dsd = datasets.load_from_disk(str(patch_dataset))
    assert set(dsd) == {"train", "val", "test"} and all(len(d) for d in dsd.values())
    assert sum(len(d) for d in dsd.values()) == 11 + 10 + 9
    assert {s for d in dsd.values() for s in d["source"]} == {
        "levircd_samples_bitcd", "dsifn_samples_changeformer", "egybcd_samples"}
    row = dsd["train"][0]
    assert row["imageA"].size == row["imageB"].size == row["label"].size == (256, 256)
    assert set(np.unique(np.asarray(row["label"]))) <= {0, 255}
    # never overwrite without --overwrite: one line, exit 2
    assert main(["folders", str(REPO), "-o", str(patch_dataset)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_train_writes_best_f1_last_and_metrics_lines(trained_run):
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert all(r["loss"] > 0 and r["pairs_per_s"] > 0 and "f1" in r["val"] for r in lines)
    assert lines[1]["lr"] < lines[0]["lr"]  # per-epoch cosine
    for name in ("best_f1", "last"):
        folder = trained_run / name
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        state = torch.load(folder / "training_state.pt", weights_only=True)
        assert set(state) >= {"optimizer", "scheduler", "epoch", "best_f1"}
    assert torch.load(trained_run / "last" / "training_state.pt", weights_only=True)["epoch"] == 1
    model = load_model(trained_run / "best_f1")
    assert model.config.maskcd_preset == "maskcd-tiny" and model.inference_spec.value_scale == 255


def _recount(maps_dir: Path, dataset_dir: Path, split: str) -> np.ndarray:
    """TP, FP, FN, TN from the saved PNG change maps and the stored 0/255 labels."""
    rows = datasets.load_from_disk(str(dataset_dir))[split]
    counts = np.zeros(4, np.int64)
    for row in rows:
        pred = np.asarray(Image.open(maps_dir / f"{row['name']}.png")) == 255
        true = np.asarray(row["label"]) > 127
        counts += [(pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum(), (~pred & ~true).sum()]
    return counts


@pytest.fixture(scope="module")
def single_process_metrics(patch_dataset, eval_model, tmp_path_factory):
    from maskcd.cli.test import main

    out = tmp_path_factory.mktemp("test1")
    assert main(["--dataset", str(patch_dataset), "--model", str(eval_model), "--save-maps", str(out / "maps"),
                 "--output", str(out / "metrics.json"), "--batch-size", "4"]) == 0
    return out


def test_test_metrics_match_a_recount_from_saved_maps(single_process_metrics, patch_dataset, trained_run, capsys):
    from maskcd.cli.test import main

    out = single_process_metrics
    m = json.loads((out / "metrics.json").read_text())
    tp, fp, fn, tn = _recount(out / "maps", patch_dataset, "test")
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["num_items"] == 11 and m["num_processes"] == 1
    n = tp + fp + fn + tn
    assert n == 11 * 256 * 256
    oa = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    assert m["oa"] == pytest.approx(oa)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert m["kappa"] == pytest.approx((oa - pe) / (1 - pe))
    assert "object_precision" in m and "object_recall" in m
    assert tp > 0 and fp + tn > 0  # the maps hold both classes: the recount is not trivial
    # the trained tiny checkpoint also goes through maskcd-test (table printed, default metrics path in its folder)
    assert main(["--dataset", str(patch_dataset), "--model", str(trained_run / "best_f1"), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "F1" in printed and "Kappa" in printed
    assert (trained_run / "best_f1" / "metrics_val.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_same_metrics_as_one(single_process_metrics, patch_dataset, eval_model, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(REPO / "pipelines/test.py"),
           "--dataset", str(patch_dataset), "--model", str(eval_model), "--batch-size", "4",
           "--save-maps", str(tmp_path / "maps"), "--output", str(tmp_path / "metrics.json")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "metrics.json").read_text())
    one = json.loads((single_process_metrics / "metrics.json").read_text())
    assert two["num_processes"] == 2  # two real gloo ranks
    assert two["num_items"] == one["num_items"] == 11  # odd count: no padding duplicates
    for key in ("tp", "fp", "fn", "tn", "objects_pred", "objects_true"):
        assert two[key] == one[key], key
    for key in ("oa", "precision", "recall", "f1", "iou", "kappa", "object_precision", "object_recall"):
        assert two[key] == pytest.approx(one[key], abs=1e-12), key
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        p.name for p in (single_process_metrics / "maps").iterdir())
