"""``maskcd-map --demo``: generate a synthetic mining-site pair (seed 2026), map it with the demo checkpoint, score it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import maskcd
from maskcd.cli.map import DEMO_SEED, main

WEIGHTS = Path(maskcd.__file__).resolve().parent / "weights" / "demo"


def test_demo_maps_and_scores(tmp_path, capsys):
    assert (WEIGHTS / "config.json").is_file() and (WEIGHTS / "model.safetensors").is_file(), (
        f"the demo checkpoint {WEIGHTS} ships with the package"
    )
    out = tmp_path / "demo.gpkg"
    rc = main(["--demo", "-o", str(out), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    m = re.search(r"precision ([\d.]+), recall ([\d.]+), F1 ([\d.]+), IoU ([\d.]+)", captured.out)
    assert m, captured.out
    p, r, f1, iou = map(float, m.groups())
    assert f1 == pytest.approx(2 * p * r / (p + r), abs=2e-3) and iou <= f1
    assert f1 > 0.8, (f"the demo checkpoint should find the synthetic mining changes (F1 {f1}; "
                     "maskcd/weights/demo/training.json records 0.96 at this seed)")
    inputs = tmp_path / "demo_demo_inputs"
    assert any(inputs.glob(f"*{DEMO_SEED}*")), "demo inputs are generated beside OUT"
