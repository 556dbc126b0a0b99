"""Class-specific bounding-box regression on pooled SPP vectors (R-CNN appendix C).

For every class a ridge regressor maps a window's pooled conv5 vector to the
offsets ``(dx, dy, dw, dh)`` (:func:`sppnet_lite.boxes.encode`) that move it onto
its ground truth. Only windows that already overlap a ground truth well
(:data:`sppnet_lite.windows.REGRESSION_IOU`) are training examples: far-away windows
carry no information about where the object is.
Taught in chapter 09.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import Ridge

from .boxes import as_boxes, decode
from .features import norm_scale


@dataclass
class BoxRegressor:
    """``K`` linear regressors: ``deltas = (x * feature_scale) @ weights[k] + bias[k]``, then de-normalised.

    ``weights`` (K, D, 4) float32, ``bias`` (K, 4), ``target_mean``/``target_std`` (4,):
    the targets are standardised before fitting so one ridge ``alpha`` suits all four.
    ``trained`` (K,) bool: classes without examples keep their boxes unchanged.
    """

    weights: np.ndarray
    bias: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    feature_scale: float
    trained: np.ndarray

    def predict_deltas(self, pooled, labels) -> np.ndarray:
        """Deltas ``(N, 4)`` for ``(N, D)`` pooled vectors, each with the regressor of its class."""
        x = _numpy(pooled).astype(np.float32) * self.feature_scale
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"labels must have one entry per feature row ({len(x)}), got {len(labels)}")
        out = np.zeros((len(x), 4), np.float32)
        for k in np.unique(labels):
            if not self.trained[k]:
                continue
            rows = labels == k
            out[rows] = (x[rows] @ self.weights[k] + self.bias[k]) * self.target_std + self.target_mean
        return out

    def refine(self, pooled, boxes, labels) -> np.ndarray:
        """Refined ``(N, 4)`` x1y1x2y2 pixel boxes: ``boxes`` moved by their class's deltas."""
        return decode(as_boxes(boxes), self.predict_deltas(pooled, labels))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias, "target_mean": self.target_mean,
                "target_std": self.target_std, "feature_scale": np.float32(self.feature_scale),
                "trained": self.trained}

    @staticmethod
    def from_arrays(a: dict[str, np.ndarray]) -> BoxRegressor:
        return BoxRegressor(a["weights"].astype(np.float32), a["bias"].astype(np.float32),
                            a["target_mean"].astype(np.float32), a["target_std"].astype(np.float32),
                            float(a["feature_scale"]), a["trained"].astype(bool))


def train_box_regressor(pooled, labels, targets, num_classes: int, alpha: float = 1000.0,
                        min_examples: int = 4) -> BoxRegressor:
    """Fit one ridge regressor per class on ``(N, D)`` pooled vectors, ``(N,)`` labels, ``(N, 4)`` targets.

    ``alpha`` is the ridge penalty on pooled vectors rescaled to mean L2 norm 20 (R-CNN
    used lambda = 1000). A class with fewer than ``min_examples`` examples is left
    untrained (its boxes pass through unchanged). Taught in chapter 09.
    """
    x_all = _numpy(pooled).astype(np.float32)
    labels = np.asarray(labels, np.int64).reshape(-1)
    targets = np.asarray(targets, np.float32).reshape(-1, 4)
    if not (len(x_all) == len(labels) == len(targets)):
        raise ValueError(f"pooled ({len(x_all)}), labels ({len(labels)}) and targets "
                         f"({len(targets)}) must have the same number of rows")
    scale = norm_scale(x_all) if len(x_all) else 1.0
    mean = targets.mean(axis=0) if len(targets) else np.zeros(4, np.float32)
    std = targets.std(axis=0) + 1e-6 if len(targets) else np.ones(4, np.float32)
    dim = x_all.shape[1] if x_all.ndim == 2 else 0
    weights = np.zeros((num_classes, dim, 4), np.float32)
    bias = np.zeros((num_classes, 4), np.float32)
    trained = np.zeros(num_classes, bool)
    for k in range(num_classes):
        rows = labels == k
        if rows.sum() < min_examples:
            continue
        ridge = Ridge(alpha=alpha).fit(x_all[rows] * scale, (targets[rows] - mean) / std)
        weights[k] = ridge.coef_.T
        bias[k] = ridge.intercept_
        trained[k] = True
    return BoxRegressor(weights, bias, mean.astype(np.float32), std.astype(np.float32), scale, trained)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
