"""Change-class metrics accumulated as counts, so that they can be summed over batches *and* processes.

Pixel level (as reported for MaskCD and MineNetCD, Yu et al., IEEE TGRS 2024, and by github.com/EricYu97/UCD;
change = positive class): from TP/FP/FN/TN summed over the whole split,
``OA = (TP+TN)/N``, ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``F1 = 2TP/(2TP+FP+FN)``,
``IoU = TP/(TP+FP+FN)`` and Cohen's ``kappa = (OA - pe)/(1 - pe)`` with
``pe = ((TP+FP)(TP+FN) + (FN+TN)(FP+TN)) / N²``. An undefined ratio (0/0) is reported as 0.

Object level: connected components (8-connectivity) of the predicted and of the true change masks of each image; a
predicted object is a true positive when its IoU with some true object is ≥ ``iou_threshold`` (0.5). Object precision =
matched predictions / predictions, object recall = matched truths / truths. At IoU ≥ 0.5 a match is unique, so no
assignment step is needed.

Distributed use: never average per-process scores; reduce :attr:`ChangeMetrics.counts` (a float64 tensor) with a sum
over processes (e.g. ``accelerator.reduce(counts, "sum")``) and call :func:`metrics_from_counts` on the result.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from maskcd.contract import IGNORE_INDEX

PIXEL_KEYS = ("tp", "fp", "fn", "tn")
OBJECT_KEYS = ("obj_tp_pred", "obj_pred", "obj_tp_true", "obj_true")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def metrics_from_counts(counts) -> dict:
    """All metrics from a counts vector ``[tp, fp, fn, tn]`` or ``[tp, fp, fn, tn, obj_tp_pred, obj_pred,
    obj_tp_true, obj_true]`` (tensor, array or sequence)."""
    c = [float(v) for v in (counts.tolist() if hasattr(counts, "tolist") else counts)]
    tp, fp, fn, tn = c[:4]
    n = tp + fp + fn + tn
    oa = _ratio(tp + tn, n)
    pe = _ratio((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), n * n)
    out = {
        "oa": oa,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "kappa": _ratio(oa - pe, 1 - pe) if n else 0.0,
        "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
    }
    if len(c) >= 8:
        out.update({
            "object_precision": _ratio(c[4], c[5]),
            "object_recall": _ratio(c[6], c[7]),
            "objects_pred": int(c[5]),
            "objects_true": int(c[7]),
        })
    return out


def object_counts(pred: np.ndarray, target: np.ndarray, iou_threshold: float = 0.5,
                  valid: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Object matches in one ``(H, W)`` image: ``(matched_pred, n_pred, matched_true, n_true)``.

    ``valid`` masks out ignored pixels before labelling components.
    """
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target).astype(bool)
    if valid is not None:
        pred, target = pred & valid, target & valid
    structure = np.ones((3, 3), bool)
    lp, n_pred = ndimage.label(pred, structure)
    lt, n_true = ndimage.label(target, structure)
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, 0, n_true
    # joint histogram of (pred id, true id) gives every intersection at once
    inter = np.bincount(lp.ravel() * (n_true + 1) + lt.ravel(), minlength=(n_pred + 1) * (n_true + 1))
    inter = inter.reshape(n_pred + 1, n_true + 1)[1:, 1:].astype(np.float64)
    area_p = np.bincount(lp.ravel(), minlength=n_pred + 1)[1:].astype(np.float64)
    area_t = np.bincount(lt.ravel(), minlength=n_true + 1)[1:].astype(np.float64)
    iou = inter / (area_p[:, None] + area_t[None, :] - inter)
    hit = iou >= iou_threshold
    return int(hit.any(1).sum()), n_pred, int(hit.any(0).sum()), n_true


class ChangeMetrics:
    """Accumulator of change-class counts.

    Args:
        objects: Also count object-level matches (connected components per image; costs a little CPU).
        iou_threshold: Object IoU needed for a match.

    ``update(pred, target)`` takes ``(B, H, W)`` or ``(H, W)`` predictions (0/1, or bool) and targets (0/1 with 255 =
    ignored), as tensors or arrays. Pixels whose target is 255 are
    excluded everywhere.
    """

    def __init__(self, objects: bool = True, iou_threshold: float = 0.5):
        self.objects = objects
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(8 if self.objects else 4, dtype=torch.float64)

    @staticmethod
    def _as_tensor(x) -> torch.Tensor:
        return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))

    def update(self, pred, target) -> None:
        pred = self._as_tensor(pred).long()
        target = self._as_tensor(target).long()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        valid = target != IGNORE_INDEX
        p = (pred == 1) & valid
        t = (target == 1) & valid
        tp = (p & t).sum()
        fp = (p & ~t).sum()
        fn = (~p & t).sum()
        tn = valid.sum() - tp - fp - fn
        self.counts[:4] += torch.stack([tp, fp, fn, tn]).double()
        if self.objects:
            for pi, ti, vi in zip(p.numpy(), t.numpy(), valid.numpy()):
                self.counts[4:] += torch.tensor(object_counts(pi, ti, self.iou_threshold, vi), dtype=torch.float64)

    def compute(self, counts: torch.Tensor | None = None) -> dict:
        """Metrics from these counts (or from ``counts``, e.g. the sum over processes)."""
        return metrics_from_counts(self.counts if counts is None else counts)

