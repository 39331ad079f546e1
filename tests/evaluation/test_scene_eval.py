"""Whole-scene sliding-window evaluation: windows cover every pixel, blending keeps per-pixel predictions exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskcd.evaluation.scene import evaluate_scene, predict_scene
from maskcd.models.base import ChangeDetectionOutput, InferenceSpec


class PixelDiffModel(torch.nn.Module):
    """A per-pixel model (no context): change probability = 1 where the two dates differ, so any stitching error
    (misplaced window, missed edge) shows up as a wrong pixel."""

    inference_spec = InferenceSpec(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), tile_size=32)

    def forward(self, image_a, image_b, labels=None):
        return ChangeDetectionOutput(change_prob=((image_a - image_b).abs().sum(1) > 0.01).float())


@pytest.mark.parametrize("shape", [(70, 45), (20, 33), (64, 64)])
def test_sliding_window_is_exact_for_a_per_pixel_model(shape, rng):
    before = rng.integers(0, 255, (3, *shape), dtype=np.uint8)
    after = before.copy()
    truth = rng.random(shape) < 0.3
    after[:, truth] = 255 - after[:, truth]
    prob = predict_scene(PixelDiffModel(), before, after, overlap=0.3, batch_size=3)
    assert prob.shape == shape
    np.testing.assert_allclose(prob, truth.astype(np.float32), atol=1e-6)


def test_evaluate_scene_reads_geotiffs_and_scores(tmp_path, geotiff_writer, rng):
    before = rng.integers(0, 250, (3, 50, 40), dtype=np.uint8)
    after = before.copy()
    truth = np.zeros((50, 40), np.uint8)
    truth[10:30, 5:20] = 1
    after[:, 10:30, 5:15] += 5  # the model finds only part of the truth
    b = geotiff_writer(tmp_path / "b.tif", before)
    a = geotiff_writer(tmp_path / "a.tif", after)
    t = geotiff_writer(tmp_path / "t.tif", truth)
    metrics, prob = evaluate_scene(PixelDiffModel(), b, a, t)
    assert metrics["precision"] == pytest.approx(1.0) and metrics["recall"] == pytest.approx(200 / 300)
    assert metrics["f1"] == pytest.approx(2 * 200 / (2 * 200 + 100))
    moved = geotiff_writer(tmp_path / "m.tif", after, origin=(500001.0, 5100000.0))
    from maskcd.errors import InputError

    with pytest.raises(InputError, match="not on the grid"):
        evaluate_scene(PixelDiffModel(), b, moved, t)
