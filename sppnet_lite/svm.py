"""One linear SVM per class, trained with hard-negative mining (R-CNN / SPP-net style).

Positives for class k are the ground-truth boxes of class k; negatives are
windows whose IoU with every ground truth of class k is below 0.3. There are far
too many negatives to train on at once, so training starts from a random sample
and then, for a few rounds, scores the whole negative pool chunk by chunk and
adds the "hard" ones (inside the margin, score > -1) to a cache of bounded
size, dropping the easiest cached negatives when it is full.

Each SVM minimises ½‖w‖² + ½(b/10)² + C·Σᵢ cᵢ·max(0, 1 − yᵢ(w·s·xᵢ + b)), with
yᵢ = ±1, cᵢ = ``positive_weight`` for positives and 1 for negatives, and s the
factor that gives the training vectors a mean L2 norm of 20: scikit-learn's
``LinearSVC(loss="hinge", dual=True)``, i.e. liblinear's dual coordinate descent
(solver 3), with the bias as an extra constant feature of value 10
(``intercept_scaling``). These are R-CNN's settings (``-w1 2 -c 1e-3 -s 3 -B 10``).
Unlike the SPP-net paper (Sec. 4.1), negatives that overlap another negative by
more than 70 % are kept. Taught in chapter 08.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.svm import LinearSVC

from .config import seed_everything
from .features import norm_scale


@dataclass
class LinearSVMs:
    """``K`` linear SVMs sharing an input scaling.

    ``weights`` (K, D) float32, ``bias`` (K,) float32, ``feature_scale``: inputs are
    multiplied by it before the dot product (R-CNN rescales vectors to a mean
    L2 norm of 20 so that one ``C`` works for every feature type).
    """

    weights: np.ndarray
    bias: np.ndarray
    feature_scale: float
    history: list = field(default_factory=list, repr=False)

    def decision_function(self, vectors) -> np.ndarray:
        """SVM scores ``(N, K)`` float32 for ``(N, D)`` vectors (NumPy or torch)."""
        x = _numpy(vectors)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[1]:
            raise ValueError(f"vectors must have shape (N, {self.weights.shape[1]}), got {x.shape}")
        return (x @ (self.weights.T * self.feature_scale) + self.bias).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias,
                "feature_scale": np.float32(self.feature_scale)}

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> LinearSVMs:
        return LinearSVMs(arrays["weights"].astype(np.float32), arrays["bias"].astype(np.float32),
                          float(arrays["feature_scale"]))


def train_svms(vectors, positives, negatives, C: float = 1e-3, positive_weight: float = 2.0,
               rounds: int = 2, initial_negatives: int = 2000, cache_size: int = 8000,
               hard_threshold: float = -1.0, chunk: int = 4096, seed: int = 0,
               progress: bool = True) -> LinearSVMs:
    """Train one linear SVM per class with ``rounds`` rounds of hard-negative mining.

    ``vectors`` (N, D) float: fc7 activations or pooled window vectors (NumPy, memmap
    or torch; read chunk by chunk),
    ``positives`` (N, K) bool (a row is a positive of class k: a ground-truth box),
    ``negatives`` (N, K) bool (IoU < 0.3 with every ground truth of class k).
    Round 0 trains on all positives and ``initial_negatives`` random negatives; each
    later round scores every negative of the pool and adds those with score >
    ``hard_threshold`` to the cache, which never holds more than ``cache_size``
    negatives (the easiest, by the scores of the SVM that mined them, are evicted); a round that
    finds no new hard negative ends the mining, and the last round only retrains.
    ``C``, ``positive_weight`` and the bias handling follow the R-CNN code (see the
    module docstring for the objective). ``history`` records, per class and
    training, the round, the cache size after its mining, the hard negatives it added
    (0 for the last round) and the training accuracy. Taught in chapter 08.
    """
    from tqdm.auto import tqdm

    positives, negatives = np.asarray(positives, bool), np.asarray(negatives, bool)
    n, k_classes = positives.shape
    if len(vectors) != n or negatives.shape != positives.shape:
        raise ValueError(f"vectors ({len(vectors)} rows), positives {positives.shape} and "
                         f"negatives {negatives.shape} must describe the same N windows")
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    scale = norm_scale(vectors, seed=seed)
    dim = _numpy(vectors[:1]).shape[1]
    weights = np.zeros((k_classes, dim), np.float32)
    bias = np.zeros(k_classes, np.float32)
    history = []
    bar = tqdm(range(k_classes), desc="SVMs", disable=not progress, leave=False)
    for k in bar:
        pos_idx = np.flatnonzero(positives[:, k])
        neg_pool = np.flatnonzero(negatives[:, k])
        if len(pos_idx) == 0 or len(neg_pool) == 0:
            bias[k] = -10.0  # nothing to learn from: never fire
            history.append({"class": k, "round": 0, "cache": 0, "new_hard": 0, "train_acc": float("nan")})
            continue
        cache = np.sort(rng.choice(neg_pool, size=min(initial_negatives, len(neg_pool)), replace=False))
        x_pos = _rows(vectors, pos_idx) * scale
        for r in range(rounds + 1):
            w, b, acc = _fit(x_pos, _rows(vectors, cache) * scale, C, positive_weight, seed)
            new_hard = 0
            if r < rounds:
                scores = _score_pool(vectors, neg_pool, w * scale, b, chunk)
                hard = neg_pool[scores > hard_threshold]
                fresh = np.setdiff1d(hard, cache)
                new_hard = len(fresh)
                if new_hard:
                    cache = np.union1d(cache, fresh)
                    if len(cache) > cache_size:
                        # Keep the hardest negatives: evict those with the lowest scores.
                        cache_scores = _score_pool(vectors, cache, w * scale, b, chunk)
                        cache = np.sort(cache[np.argsort(-cache_scores)[:cache_size]])
            history.append({"class": k, "round": r, "cache": len(cache),
                            "new_hard": int(new_hard), "train_acc": acc})
            weights[k], bias[k] = w, b
            if r < rounds and new_hard == 0:
                break
    return LinearSVMs(weights, bias, scale, history)


def _fit(x_pos, x_neg, C, positive_weight, seed):
    x = np.concatenate([x_pos, x_neg]).astype(np.float32)
    y = np.concatenate([np.ones(len(x_pos)), np.zeros(len(x_neg))]).astype(np.int64)
    svm = LinearSVC(C=C, class_weight={1: positive_weight, 0: 1.0}, intercept_scaling=10.0,
                    loss="hinge", dual=True, max_iter=5000, random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    acc = float((svm.predict(x) == y).mean())
    return svm.coef_[0].astype(np.float32), np.float32(svm.intercept_[0]), acc


def _score_pool(vectors, index, w, b, chunk):
    out = np.empty(len(index), np.float32)
    for start in range(0, len(index), chunk):
        rows = index[start:start + chunk]
        out[start:start + chunk] = _rows(vectors, rows) @ w + b
    return out


def _rows(vectors, index) -> np.ndarray:
    return _numpy(vectors[np.asarray(index)]).astype(np.float32)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
