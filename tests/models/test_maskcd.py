"""MaskCD: published-checkpoint parity, full-size structure, the call contract, training on a real pair."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from maskcd.errors import CheckpointError, ConfigError, ModelNotFoundError
from maskcd.models import build_model, count_parameters, load_model
from maskcd.models.convert import legacy_key_mapping
from maskcd.models.maskcd import MaskCDForChangeDetection

from _checks import assert_same_outputs, assert_same_weights


def test_legacy_checkpoint_reproduces_reference_outputs(shared_data):
    folder = shared_data("reference", "maskcd_tiny_legacy")
    ref = np.load(folder / "reference_io.npz")
    model = load_model(folder).eval()
    assert isinstance(model, MaskCDForChangeDetection)
    assert model.config.num_labels == 150  # the published 151-way head is kept
    with torch.no_grad():
        out = model(torch.from_numpy(ref["image_a"]), torch.from_numpy(ref["image_b"]))
    np.testing.assert_allclose(out.class_queries_logits.numpy(), ref["class_queries_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.masks_queries_logits.numpy(), ref["masks_queries_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.change_prob.numpy(), ref["change_scores"], atol=1e-5, rtol=0)
    change_map = (out.change_prob > 0.5).numpy().astype(ref["change_map"].dtype)
    np.testing.assert_array_equal(change_map, ref["change_map"])


def test_swin_b_preset_matches_published_checkpoint_keys(shared_data):
    ref = json.loads(shared_data("reference", "maskcd_swin_b_checkpoint_keys.json").read_text())
    shapes = ref["keys"]
    with torch.device("meta"):
        model = build_model("maskcd-swin-b")
    mapping = legacy_key_mapping(model, shapes)
    state = model.state_dict()
    buffers = dict(model.named_buffers())
    targets = []
    for key, shape in shapes.items():
        target = mapping[key]
        if target not in state:
            # transformers 5 recomputes Swin's relative_position_index as a flattened non-persistent buffer
            assert key.endswith("attention.self.relative_position_index"), key
            target = target.replace("attention.self.relative_position_index",
                                    "attention.relative_position_bias.relative_position_index")
            assert buffers[target].numel() == int(np.prod(shape)), key
        else:
            assert tuple(state[target].shape) == tuple(shape), (key, target)
        targets.append(target)
    assert len(set(targets)) == len(targets)  # one to one
    # every tensor of the model is covered (Swin's unused final layernorm is dropped, as in the published layout)
    assert sorted(set(state) - set(targets)) == []
    assert count_parameters(model) == ref["num_parameters"] == 107_413_711


def test_full_size_presets_structure():
    with torch.device("meta"):
        swin_t = build_model("maskcd-swin-t")
    cfg = swin_t.config
    assert cfg.backbone_config.depths == [2, 2, 6, 2] and cfg.num_labels == 2 and cfg.num_queries == 100
    decoder = swin_t.model.pixel_level_module.decoder
    # pixel decoder built for the doubled (concatenated) channels: Swin-T 96·2^i → 192·2^i
    assert [p[0].in_channels for p in decoder.input_projections] == [1536, 768, 384]
    assert swin_t.class_predictor.out_features == 3
    assert 45e6 < count_parameters(swin_t) < 50e6


@pytest.mark.parametrize("batch,size", [(1, (64, 64)), (2, (96, 80))])
def test_call_contract(tiny_maskcd, batch, size):
    torch.manual_seed(0)
    a, b = torch.randn(batch, 3, *size), torch.randn(batch, 3, *size)
    labels = torch.randint(0, 2, (batch, *size))
    labels[:, :4] = 255
    out = tiny_maskcd(a, b, labels=labels)
    assert out.change_prob.shape == (batch, *size)
    assert out.class_queries_logits.shape == (batch, 8, 3)
    assert out.masks_queries_logits.shape == (batch, 8, size[0] // 4, size[1] // 4)
    assert torch.isfinite(out.loss) and 0 <= out.change_prob.min() and out.change_prob.max() <= 1
    assert tiny_maskcd(a, b).loss is None


def test_labels_become_one_mask_per_present_class():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :4] = 1
    labels[0, 0] = 255
    masks, classes = MaskCDForChangeDetection.labels_to_targets(labels)
    assert classes[0].tolist() == [0, 1] and classes[1].tolist() == [0]
    assert masks[0].shape == (2, 8, 8) and masks[1].shape == (1, 8, 8)
    assert masks[0][1].sum() == 4 * 8 - 8 and masks[0][:, 0].sum() == 0  # ignored row is in neither mask


def test_save_load_bit_exact(tmp_path, tiny_maskcd):
    tiny_maskcd.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors"} <= files and "pytorch_model.bin" not in files
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["maskcd_architecture"] == "maskcd"
    assert cfg["input_bands"] == ["red", "green", "blue"] and cfg["value_scale"] == 255.0 and cfg["tile_size"] == 256
    loaded = load_model(tmp_path / "m").eval()
    assert_same_weights(tiny_maskcd, loaded, "maskcd-tiny")
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(tiny_maskcd(a, b).change_prob, loaded(a, b).change_prob)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/maskcd_pickle_ran",))


def test_pickle_that_runs_code_is_refused(tmp_path, shared_data):
    legacy = shared_data("reference", "maskcd_tiny_legacy")
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((legacy / "config.json").read_text())
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.class_predictor.weight": _RunsCode()}, f)
    marker = __import__("pathlib").Path("/tmp/maskcd_pickle_ran")
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="pytorch_model.bin is not a plain tensor checkpoint .*safetensors"):
        load_model(folder)
    assert not marker.exists()


def test_registry_errors_list_valid_choices():
    with pytest.raises(ModelNotFoundError, match="maskcd-tiny"):
        build_model("no-such-model")
    with pytest.raises(ConfigError, match="num_queries"):
        build_model("maskcd-tiny", num_querys=4)
    assert build_model("maskcd-tiny", num_queries=4).config.num_queries == 4


def test_offline_hub_id_fails_with_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match="local folder"):
        load_model("ericyu/MaskCD_LEVIRCD_Cropped256")


def test_hub_id_resolves_through_the_cache(monkeypatch, tmp_path, tiny_maskcd):
    """A cached Hub snapshot loads offline, through huggingface_hub's cache layout."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    snap = cache / "models--someone--maskcd-tiny" / "snapshots" / ("0" * 40)
    tiny_maskcd.save_pretrained(snap)
    (cache / "models--someone--maskcd-tiny" / "refs").mkdir(parents=True)
    (cache / "models--someone--maskcd-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    model = load_model("someone/maskcd-tiny")
    assert isinstance(model, MaskCDForChangeDetection)


def _read_pair(root, name):
    def rgb(p):
        return torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)

    label = np.array(Image.open(root / "label" / name))
    label = label[..., 0] if label.ndim == 3 else label
    return rgb(root / "A" / name), rgb(root / "B" / name), torch.from_numpy((label > 127).astype(np.int64))


def test_tiny_maskcd_overfits_one_real_pair(shared_data):
    root = shared_data("levircd_samples_bitcd")
    torch.manual_seed(0)
    model = build_model("maskcd-tiny")
    spec = model.inference_spec
    a, b, label = _read_pair(root, "test_2_0000_0000.png")
    a, b, label = spec.normalize(a)[None], spec.normalize(b)[None], label[None]
    assert 0.1 < label.float().mean() < 0.4
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, f1 = [], 0.0
    for step in range(1, 61):
        model.train()
        loss = model(a, b, labels=label).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(a, b).change_prob[0] > 0.5
            tp = (pred & (label[0] == 1)).sum().item()
            f1 = 2 * tp / (pred.sum().item() + (label[0] == 1).sum().item())
            if f1 > 0.9:
                break
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    assert f1 > 0.9, f"F1 {f1:.3f} after {step} steps"
