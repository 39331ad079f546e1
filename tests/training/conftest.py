"""Session fixtures for the training tests: the DatasetDict built from the real samples and one tiny training run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MASKCD_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = ("levircd_samples_bitcd", "dsifn_samples_changeformer", "egybcd_samples")
DEMO = REPO / "maskcd" / "weights" / "demo"


@pytest.fixture(scope="session")
def patch_dataset(tmp_path_factory) -> Path:
    """``maskcd-dataset folders`` over the three labelled real sample sets (skipped when ../shared/data is absent)."""
    from maskcd.cli.dataset import main

    roots = [SHARED / s for s in SOURCES]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        pytest.skip(f"real test data {missing} is absent (../shared/data is not beside the checkout)")
    out = tmp_path_factory.mktemp("ds") / "real_samples"
    assert main(["folders", *map(str, roots), "-o", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_run(patch_dataset, tmp_path_factory) -> Path:
    """``maskcd-train`` of maskcd-tiny on it: 2 epochs of 64² crops (3 steps each), validation every epoch."""
    from maskcd.cli.train import main

    out = tmp_path_factory.mktemp("run") / "exp"
    rc = main(["--dataset", str(patch_dataset), "--model", "maskcd-tiny", "--batch-size", "4", "--learning-rate",
               "1e-3", "--epochs", "2", "--val-every", "1", "--crop", "64", "--max-steps-per-epoch", "3",
               "--val-batch-size", "6", "--output-dir", str(out), "--seed", "0"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def eval_model(trained_run) -> Path:
    """The model the test-metric checks run: the committed demo checkpoint (it predicts real change on these
    images, so the maps hold both classes) when present, else the tiny run's best_f1."""
    return DEMO if (DEMO / "config.json").is_file() else trained_run / "best_f1"
