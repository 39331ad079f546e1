"""ChangeMetrics: counts, formulas (hand-computed), ignore index, object matching, additivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskcd.evaluation.metrics import ChangeMetrics, metrics_from_counts, object_counts


def test_pixel_metrics_match_hand_computation_and_ignore_255():
    pred = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    target = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [255, 255, 255, 255]])  # last row ignored
    m = ChangeMetrics(objects=False)
    m.update(pred, target)
    r = m.compute()
    tp, fp, fn, tn = 2, 1, 1, 4
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (tp, fp, fn, tn)
    n = 8
    oa = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    assert r["oa"] == pytest.approx(oa)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["kappa"] == pytest.approx((oa - pe) / (1 - pe))
    assert r["kappa"] == pytest.approx(0.46666666, abs=1e-6)


def test_counts_are_additive_over_batches_and_undefined_ratios_are_zero(rng):
    pred = rng.integers(0, 2, (6, 16, 16))
    target = rng.integers(0, 2, (6, 16, 16))
    target[0, :4] = 255
    whole, parts = ChangeMetrics(), ChangeMetrics()
    whole.update(pred, target)
    parts.update(pred[:2], target[:2])
    parts.update(pred[2:], target[2:])
    assert torch.equal(whole.counts, parts.counts)
    # summing two accumulators' counts (what a reduce over processes does) equals one accumulator over everything
    a, b = ChangeMetrics(), ChangeMetrics()
    a.update(pred[:3], target[:3])
    b.update(pred[3:], target[3:])
    assert metrics_from_counts(a.counts + b.counts) == whole.compute()
    empty = metrics_from_counts([0, 0, 0, 10])
    assert empty["f1"] == 0.0 and empty["precision"] == 0.0 and empty["oa"] == 1.0


def test_object_level_matching_at_iou_half():
    target = np.zeros((20, 20), int)
    target[2:8, 2:8] = 1  # object 1: 36 px
    target[12:18, 12:18] = 1  # object 2: 36 px
    pred = np.zeros((20, 20), int)
    pred[2:8, 3:8] = 1  # IoU 30/36 with object 1 -> match
    pred[12:14, 12:14] = 1  # IoU 4/36 with object 2 -> no match
    pred[0, 19] = 1  # false object
    assert object_counts(pred, target) == (1, 3, 1, 2)
    m = ChangeMetrics()
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    r = m.compute()
    assert r["object_precision"] == pytest.approx(1 / 3) and r["object_recall"] == pytest.approx(1 / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ChangeMetrics().update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
