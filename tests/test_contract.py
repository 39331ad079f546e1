"""The raster contract (maskcd.contract): helpers round trip, and the reading side does not depend on the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from maskcd.contract import IGNORE_INDEX, NODATA, PROB_SCALE, InferenceSpec, prob_to_uint8, uint8_to_prob

REPO = Path(__file__).resolve().parents[1]


def test_constants():
    assert (NODATA, PROB_SCALE, IGNORE_INDEX) == (255, 254, 255)


def test_every_stored_value_round_trips():
    raw = np.arange(256, dtype=np.uint8)
    prob = uint8_to_prob(raw)
    assert prob.dtype == np.float32
    assert np.isnan(prob[NODATA]) and not np.isnan(prob[:NODATA]).any()
    np.testing.assert_allclose(prob[:NODATA], np.arange(255) / 254, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(prob_to_uint8(prob), raw)


def test_probabilities_round_trip_within_half_a_step():
    p = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    p[0, :3] = [0.0, 1.0, 0.5]
    back = uint8_to_prob(prob_to_uint8(p))
    assert np.abs(back - p).max() <= 0.5 / PROB_SCALE + 1e-7
    assert prob_to_uint8(np.array([0.0, 1.0, 0.5, 1 / 254]))[:4].tolist() == [0, 254, 127, 1]


def test_nan_is_nodata_and_out_of_range_is_clipped():
    out = prob_to_uint8(np.array([np.nan, -0.3, 1.7, 0.999], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [NODATA, 0, PROB_SCALE, PROB_SCALE]


def test_uint8_to_prob_honours_the_file_nodata():
    prob = uint8_to_prob(np.array([0, 7, 254], dtype=np.uint8), nodata=7)
    assert np.isnan(prob[1]) and prob[0] == 0 and prob[2] == 1


def test_inference_spec_is_the_models_one():
    from maskcd.models import InferenceSpec as ModelsSpec
    from maskcd.models.base import IGNORE_INDEX as MODELS_IGNORE

    assert ModelsSpec is InferenceSpec and MODELS_IGNORE == IGNORE_INDEX


def _fresh_import(code: str):
    """Run ``code`` in a fresh interpreter (the checkout first on the path); the JSON its last line prints."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_io_does_not_import_models():
    """Importing every maskcd.io module (and the contract) loads neither maskcd.models nor transformers."""
    result = _fresh_import(
        "import importlib, json, pkgutil, sys\n"
        "import maskcd.io, maskcd.contract\n"
        "names = [m.name for m in pkgutil.iter_modules(maskcd.io.__path__, 'maskcd.io.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(json.dumps({'modules': names, 'loaded': sorted(m for m in sys.modules "
        "if m.startswith(('maskcd.models', 'transformers')))}))\n"
    )
    assert "maskcd.io.align" in result["modules"]
    assert result["loaded"] == [], f"maskcd.io imports {result['loaded']}"


def test_vectorization_and_its_worker_helpers_do_not_import_torch():
    """``maskcd.vectorization`` and :mod:`maskcd.workers` (its process pool's initializer) load neither torch nor the
    model or inference code, so a vectorise-only run and its worker processes start light."""
    loaded = _fresh_import(
        "import json, sys\n"
        "import maskcd.vectorization, maskcd.workers\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m.startswith(('maskcd.models', 'maskcd.inference')))))\n"
    )
    assert loaded == [], f"maskcd.vectorization / maskcd.workers import {len(loaded)} modules: {loaded[:6]}"
