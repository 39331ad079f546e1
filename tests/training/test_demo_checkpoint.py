"""The committed demo checkpoint: small safetensors, inference spec recorded, F1 >= 0.8 on a fresh synthetic pair."""

from __future__ import annotations

import json

from maskcd.data.synthetic import make_scene_pair
from maskcd.evaluation.scene import evaluate_scene
from maskcd.models import load_model
from maskcd.weights import DEMO_CHECKPOINT


def test_demo_checkpoint_is_small_and_records_its_inference_spec():
    files = {p.name: p.stat().st_size for p in DEMO_CHECKPOINT.iterdir()}
    assert "model.safetensors" in files and not any(n.endswith((".bin", ".pt", ".pth")) for n in files)
    assert sum(files.values()) <= 10 * 2**20
    config = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    assert config["maskcd_architecture"] == "maskcd" and config["maskcd_preset"] == "maskcd-demo"
    assert config["value_scale"] == 255 and config["tile_size"] == 128 and config["gsd"] == 1.0
    assert config["input_bands"] == ["red", "green", "blue"] and len(config["image_mean"]) == 3


def test_demo_checkpoint_maps_a_fresh_synthetic_pair_with_f1_above_0_8(tmp_path):
    model = load_model(DEMO_CHECKPOINT).eval()
    # integer seeds are a different seed stream from the training scenes (seeded [TRAIN_SEED, i])
    pair = make_scene_pair(tmp_path, seed=11, size=384)
    metrics, prob = evaluate_scene(model, pair["before"], pair["after"], pair["truth"], overlap=0.25)
    assert prob.shape == (384, 384)
    assert metrics["f1"] >= 0.8, metrics
    assert metrics["kappa"] > 0.7
