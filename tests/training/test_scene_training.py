"""A scene catalog of seeded GeoTIFFs trains through the TorchGeo samplers; --resume continues where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from maskcd.data.scenes import write_catalog
from maskcd.data.synthetic import make_scene_pair

from tests.conftest import HANG_TIMEOUT_S


@pytest.fixture
def catalog(tmp_path):
    sites = []
    for i, split in enumerate(["train", "train", "val"]):
        pair = make_scene_pair(tmp_path / f"site{i}", seed=300 + i, size=96, origin=(600000.0 + 3000 * i, 5200000.0))
        sites.append({"name": f"site{i}", "before": pair["before"], "after": pair["after"], "label": pair["truth"],
                      "split": split})
    return write_catalog(tmp_path / "catalog.yaml", sites)


def _train(catalog, out, epochs, resume=None):
    from maskcd.cli.train import main

    argv = ["--dataset", str(catalog), "--model", "maskcd-tiny", "--batch-size", "2", "--learning-rate", "1e-3",
            "--epochs", str(epochs), "--val-every", "1", "--crop", "48", "--stride", "48", "--chips-per-site", "2",
            "--optimizer", "adamw", "--warmup-epochs", "1", "--output-dir", str(out), "--seed", "1"]
    if resume:
        argv += ["--resume", str(resume)]
    return main(argv)


def test_catalog_trains_with_torchgeo_samplers_and_resumes(catalog, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _train(catalog, out, epochs=1) == 0
    first = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert first["epoch"] == 0
    steps_epoch0 = first["optimizer"]["state"][0]["step"]
    assert steps_epoch0 == 2  # 2 train sites x 2 chips / batch 2
    # the same folder again without --resume or --overwrite is refused
    assert _train(catalog, out, epochs=2) == 2
    assert "--resume" in capsys.readouterr().err
    # resume: epoch 1 only, optimizer state (Adam step counts) and schedule continue
    assert _train(catalog, out, epochs=2, resume=out / "last") == 0
    second = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert second["epoch"] == 1
    assert second["optimizer"]["state"][0]["step"] == 2 * steps_epoch0
    assert second["scheduler"]["last_epoch"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert lines[0]["pairs"] == lines[1]["pairs"] == 4
    assert lines[1]["val"]["num_items"] == 4  # GridGeoSampler: 2x2 chips of 48 px on the 96 px val site
    assert lines[0]["lr"] < lines[1]["lr"]  # warm-up epoch, then the cosine starts at the full rate
    assert (out / "best_f1" / "model.safetensors").is_file()


def test_per_step_schedule_steps_after_every_optimizer_step_and_resumes(catalog, tmp_path):
    """``--lr-schedule step``: the cosine advances once per optimizer step (2 per epoch here), warm-up in steps, and a
    resumed run continues the count (per-epoch stepping would leave ``last_epoch`` at 2 and 3)."""
    from maskcd.cli.train import main
    from maskcd.training.trainer import lr_factor

    out = tmp_path / "exp"
    base = ["--dataset", str(catalog), "--model", "maskcd-tiny", "--batch-size", "2", "--learning-rate", "1e-3",
            "--min-lr", "1e-5", "--val-every", "2", "--crop", "48", "--stride", "48", "--chips-per-site", "2",
            "--lr-schedule", "step", "--warmup-steps", "1", "--output-dir", str(out), "--seed", "1"]
    assert main([*base, "--epochs", "2", "--max-steps-per-epoch", "2"]) == 0
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 optimizer steps
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the rate the next step uses, after 2 and 4 of the 4 steps (1 warm-up step, then cosine to 1e-5)
    assert [r["lr"] for r in lines] == pytest.approx([1e-3 * lr_factor(s, 4, 1, 0.01) for s in (2, 4)])
    assert lines[0]["lr"] > lines[1]["lr"]
    assert main([*base, "--epochs", "3", "--max-steps-per-epoch", "2", "--resume", str(out / "last")]) == 0
    assert torch.load(out / "last" / "training_state.pt", weights_only=True)["scheduler"]["last_epoch"] == 6


def test_two_process_training_matches_one_process_loss_scale(catalog, tmp_path):
    """torchrun with 2 gloo ranks trains the same chips; the epoch loss keeps the single-process scale (transformers'
    Mask2Former loss would double its mask/dice terms under 2 processes without the num_masks fix)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    assert _train(catalog, tmp_path / "one", epochs=1) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port),
           str(repo / "pipelines/train.py"), "--dataset", str(catalog), "--model", "maskcd-tiny", "--batch-size", "1",
           "--learning-rate", "1e-3", "--epochs", "1", "--val-every", "1", "--crop", "48", "--stride", "48",
           "--chips-per-site", "2", "--optimizer", "adamw", "--warmup-epochs", "1", "--output-dir",
           str(tmp_path / "two"), "--seed", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert two["pairs"] == one["pairs"] == 4 and two["val"]["num_processes"] == 2
    assert two["val"]["num_items"] == one["val"]["num_items"] == 4
    assert 0.7 < two["loss"] / one["loss"] < 1.35, (one["loss"], two["loss"])
    assert torch.load(tmp_path / "two" / "last" / "training_state.pt", weights_only=True)["epoch"] == 0
