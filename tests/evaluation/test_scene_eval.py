"""Whole-scene evaluation: the production pipeline maps the pair, the mask is scored against the truth raster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskcd.errors import InputError
from maskcd.evaluation.scene import evaluate_scene, score_mask
from maskcd.models.base import ChangeDetectionOutput, InferenceSpec


class PixelDiffModel(torch.nn.Module):
    """A per-pixel model (no context): change probability = 1 where the two dates differ, so any stitching error
    (misplaced window, missed edge) shows up as a wrong pixel."""

    inference_spec = InferenceSpec(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), tile_size=32)

    def forward(self, image_a, image_b, labels=None):
        return ChangeDetectionOutput(change_prob=((image_a - image_b).abs().sum(1) > 0.01).float())


def test_score_mask_counts(tmp_path, geotiff_writer):
    pred = np.array([[1, 1, 0, 255], [0, 1, 0, 0]], np.uint8)
    true = np.array([[1, 0, 0, 1], [1, 1, 255, 0]], np.uint8)
    mp = geotiff_writer(tmp_path / "p.tif", pred, nodata=255)
    tp = geotiff_writer(tmp_path / "t.tif", true)
    m = score_mask(mp, tp)
    # valid: 6 pixels; tp=2 (0,0),(1,1); fp=1 (0,1); fn=1 (1,0); tn=2
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["f1"] == pytest.approx(2 / 3) and m["iou"] == pytest.approx(0.5)
    assert score_mask(mp, tp, objects=True)["tp"] == 2
    with pytest.raises(InputError, match="truth image .*nope.tif does not exist"):
        score_mask(mp, tmp_path / "nope.tif")


@pytest.mark.parametrize("shape", [(70, 45), (20, 33)])
def test_evaluate_scene_reads_geotiffs_and_scores(tmp_path, geotiff_writer, rng, shape):
    before = rng.integers(0, 250, (3, *shape), dtype=np.uint8)
    after = before.copy()
    truth = np.zeros(shape, np.uint8)
    truth[5:15, 5:20] = 1
    after[:, 5:15, 5:15] += 5  # the model finds only part of the truth
    b = geotiff_writer(tmp_path / "b.tif", before)
    a = geotiff_writer(tmp_path / "a.tif", after)
    t = geotiff_writer(tmp_path / "t.tif", truth)
    metrics, prob = evaluate_scene(PixelDiffModel(), b, a, t, overlap=0.3, batch_size=3)
    assert prob.shape == shape
    np.testing.assert_allclose(prob, (after != before).any(0).astype(np.float32), atol=1e-6)
    assert metrics["precision"] == pytest.approx(1.0) and metrics["recall"] == pytest.approx(100 / 150)
    assert metrics["f1"] == pytest.approx(2 * 100 / (2 * 100 + 50))
    moved = geotiff_writer(tmp_path / "m.tif", truth, origin=(500001.0, 5100000.0))
    with pytest.raises(InputError, match="not on the grid"):
        evaluate_scene(PixelDiffModel(), b, a, moved)
