"""Per-class linear SVMs with hard-negative mining, on synthetic feature clusters."""

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from sppnet_lite.features import norm_scale
from sppnet_lite.svm import LinearSVMs, train_svms


def make_pool(seed=0, n_neg=3000, n_pos=40, dim=16, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, dim))
    pos = [centres[c] + rng.normal(0, 1, (n_pos, dim)) for c in range(k)]
    neg = rng.normal(0, 1.5, (n_neg, dim))
    # a few hard negatives sit close to each class centre
    hard = [centres[c] * 0.6 + rng.normal(0, 1, (30, dim)) for c in range(k)]
    x = np.concatenate(pos + [neg] + hard).astype(np.float32)
    n = len(x)
    positives = np.zeros((n, k), bool)
    for c in range(k):
        positives[c * n_pos:(c + 1) * n_pos, c] = True
    negatives = np.zeros((n, k), bool)
    negatives[k * n_pos:, :] = True  # background windows are negatives of every class
    for c in range(k):  # other classes' positives are negatives too
        negatives[positives[:, c], :] = True
        negatives[positives[:, c], c] = False
    return x, positives, negatives


def test_mining_finds_hard_negatives_and_keeps_cache_bounded():
    x, pos, neg = make_pool()
    svms = train_svms(x, pos, neg, C=0.01, rounds=2, initial_negatives=100, cache_size=400,
                      progress=False)
    assert svms.weights.shape == (3, 16) and svms.bias.shape == (3,)
    assert all(h["cache"] <= 400 for h in svms.history)
    assert any(h["new_hard"] > 0 for h in svms.history if h["round"] == 0)
    scores = svms.decision_function(x)
    for c in range(3):
        acc_pos = (scores[pos[:, c], c] > 0).mean()
        acc_neg = (scores[neg[:, c], c] < 0).mean()
        assert acc_pos > 0.95 and acc_neg > 0.97


def test_mined_svm_matches_svm_trained_on_everything():
    # oracle: with an unbounded cache, mining reaches the SVM trained on the whole pool
    x, pos, neg = make_pool(seed=1, n_neg=1500)
    mined = train_svms(x, pos, neg, C=0.01, rounds=4, initial_negatives=50, cache_size=10_000,
                       progress=False)
    scale = mined.feature_scale
    for c in range(3):
        rows = pos[:, c] | neg[:, c]
        full = LinearSVC(C=0.01, class_weight={1: 2.0, 0: 1.0}, intercept_scaling=10.0,
                         loss="hinge", max_iter=20000).fit(x[rows] * scale, pos[rows, c])
        agree = (np.sign(full.decision_function(x[rows] * scale))
                 == np.sign(mined.decision_function(x[rows])[:, c])).mean()
        assert agree > 0.99


def test_one_round_of_mining_by_hand_equals_train_svms():
    """Chapter 08's check: the round written out (R-CNN's solver settings, score the pool,
    add the margin violators, keep the hardest ``cache_size``, retrain) is ``rounds=1``."""
    x, pos, neg = make_pool(seed=2)
    k, scale = 1, norm_scale(x)
    pos_idx, pool = np.flatnonzero(pos[:, k]), np.flatnonzero(neg[:, k])

    def fit(cache):
        rows = np.concatenate([x[pos_idx], x[cache]]) * scale
        y = np.r_[np.ones(len(pos_idx), np.int64), np.zeros(len(cache), np.int64)]
        svm = LinearSVC(C=0.01, class_weight={1: 2.0, 0: 1.0}, intercept_scaling=10.0,
                        loss="hinge", dual=True, max_iter=5000, random_state=0).fit(rows, y)
        return svm.coef_[0].astype(np.float32), np.float32(svm.intercept_[0])

    cache = np.sort(np.random.default_rng(0).choice(pool, size=100, replace=False))
    w, b = fit(cache)
    fresh = np.setdiff1d(pool[x[pool] @ (w * scale) + b > -1], cache)
    cache = np.union1d(cache, fresh)
    assert len(cache) > 120  # the eviction below is exercised
    cache = np.sort(cache[np.argsort(-(x[cache] @ (w * scale) + b))[:120]])
    w, b = fit(cache)

    svms = train_svms(x, pos[:, [k]], neg[:, [k]], C=0.01, rounds=1, initial_negatives=100,
                      cache_size=120, progress=False)
    assert [(h["round"], h["new_hard"], h["cache"]) for h in svms.history] == [
        (0, len(fresh), 120), (1, 0, 120)]
    np.testing.assert_allclose(svms.weights[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(svms.bias[0], b, rtol=1e-5, atol=1e-6)


def test_feature_scale_and_round_trip():
    x, pos, neg = make_pool(n_neg=300)
    svms = train_svms(x, pos, neg, rounds=1, progress=False)
    # R-CNN's rescaling to a mean norm of 20, from the shared helper
    assert svms.feature_scale == norm_scale(x)
    assert np.linalg.norm(x * svms.feature_scale, axis=1).mean() == pytest.approx(20.0, rel=0.05)
    again = LinearSVMs.from_arrays(svms.to_arrays())
    np.testing.assert_allclose(again.decision_function(x), svms.decision_function(x), rtol=1e-6)


def test_class_without_positives_never_fires_and_errors():
    x, pos, neg = make_pool(n_neg=200)
    pos[:, 2] = False
    svms = train_svms(x, pos, neg, rounds=1, progress=False)
    assert (svms.decision_function(x)[:, 2] < 0).all()
    with pytest.raises(ValueError, match="same N"):
        train_svms(x[:10], pos, neg)
    with pytest.raises(ValueError, match=r"vectors must have shape \(N, 16\)"):
        svms.decision_function(np.zeros((2, 5)))
