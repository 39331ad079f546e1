"""``save_checkpoint`` writes through the one atomic helper: a complete new folder replaces the old one, and a failed
write leaves the old checkpoint as it was and no temporary behind."""

from __future__ import annotations

import json

import pytest
import torch

from maskcd.models import build_model, load_model
from maskcd.training.trainer import STATE_FILE, load_training_state, save_checkpoint


def _parts(seed: int):
    torch.manual_seed(seed)
    model = build_model("maskcd-demo")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return model, opt, sched


def test_save_checkpoint_replaces_whole_folder_and_leaves_no_temporaries(tmp_path):
    folder = tmp_path / "run" / "last"
    save_checkpoint(folder, *_parts(0), epoch=1, best_f1=0.5, metrics={"f1": 0.5})
    (folder / "stale.txt").write_text("from an older checkpoint")
    model2, opt2, sched2 = _parts(1)
    save_checkpoint(folder, model2, opt2, sched2, epoch=2, best_f1=0.7, metrics=None)

    assert sorted(p.name for p in folder.parent.iterdir()) == ["last"], "no hidden temporary or .old folder left"
    assert not (folder / "stale.txt").exists() and not (folder / "metrics.json").exists(), "the old folder is gone"
    assert load_training_state(folder)["epoch"] == 2
    loaded = load_model(folder)
    for k, v in model2.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "last"
    save_checkpoint(folder, *_parts(0), epoch=1, best_f1=0.5, metrics={"f1": 0.5})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(folder, *_parts(1), epoch=2, best_f1=0.7, metrics=None)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert json.loads((folder / "metrics.json").read_text()) == {"f1": 0.5} and (folder / STATE_FILE).is_file()
