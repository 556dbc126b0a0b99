"""Fine-tuning the FC head on synthetic pooled window vectors (sppnet_lite.finetune)."""

import numpy as np
import pytest
import torch

from sppnet_lite.finetune import (
    FG_FRACTION,
    FCHead,
    classification_metrics,
    head_outputs,
    sample_minibatch,
    train_fc_head,
)


def synthetic_windows(seed=0, n=1500, dim=32, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (k + 1, dim))
    ious = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, k, n)
    labels = np.where(ious >= 0.5, classes, k)
    x = centres[labels] + rng.normal(0, 1, (n, dim))
    return x.astype(np.float16), labels, ious


def test_minibatch_has_quarter_foreground_and_background_band():
    assert FG_FRACTION == 0.25
    _, labels, ious = synthetic_windows()
    rows = sample_minibatch(labels, ious, 128, np.random.default_rng(0))
    assert len(rows) == 128
    assert (ious[rows] >= 0.5).sum() == 32
    bg = ious[rows][ious[rows] < 0.5]
    assert bg.min() >= 0.1
    few = sample_minibatch(labels, np.where(ious >= 0.5, 0.2, ious), 64, np.random.default_rng(0))
    assert len(few) == 64  # no foreground at all: background fills the batch


def test_minibatch_thresholds_are_arguments():
    _, labels, ious = synthetic_windows()
    rows = sample_minibatch(labels, ious, 100, np.random.default_rng(1), fg_fraction=0.5,
                            fg_iou=0.7, bg_iou=(0.2, 0.4))
    assert len(rows) == 100
    fg = ious[rows] >= 0.7
    assert fg.sum() == 50
    assert ((ious[rows][~fg] >= 0.2) & (ious[rows][~fg] < 0.4)).all()


def test_fine_tuning_learns_the_classes():
    x, labels, ious = synthetic_windows()
    head, history = train_fc_head(x, labels, ious, num_classes=3, hidden=64, iterations=80,
                                  batch_size=64, lr=3e-3, progress=False, val=(x[:300], labels[:300]),
                                  val_windows=200)
    assert not head.training
    assert history["loss"][-1] < history["loss"][0]
    metrics = classification_metrics(head, x, labels)
    assert metrics["fg_accuracy"] > 0.9
    assert len(history["val"]) >= 10 and 1 <= history["best_iteration"] <= 80
    assert head(torch.zeros(2, 32)).shape == (2, 4)
    assert head.fc7_activations(torch.zeros(2, 32)).shape == (2, 64)


def test_fine_tuning_takes_fg_iou_and_checks_lengths():
    x, labels, ious = synthetic_windows(n=300)
    head, history = train_fc_head(x, labels, ious, num_classes=3, hidden=16, iterations=5,
                                  batch_size=32, fg_iou=0.8, bg_iou=(0.0, 0.8), progress=False)
    assert len(history["loss"]) == 5 and head.hidden == 16
    with pytest.raises(ValueError, match="same number of rows"):
        train_fc_head(x, labels[:10], ious, num_classes=3, progress=False)


def test_head_outputs_match_the_layers():
    torch.manual_seed(0)
    head = FCHead(12, 3, hidden=8).train()
    head.input_scale.fill_(0.5)
    pooled = np.random.default_rng(0).normal(size=(7, 12)).astype(np.float32)
    fc7, probs = head_outputs(head, pooled, batch=3)
    assert head.training  # the mode is restored
    assert fc7.shape == (7, 8) and probs.shape == (7, 4) and fc7.dtype == np.float32
    with torch.no_grad():
        x = torch.from_numpy(pooled) * 0.5
        expected = torch.relu(head.fc7(torch.relu(head.fc6(x))))
        np.testing.assert_allclose(fc7, expected.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs, torch.softmax(head.fc8(expected), 1).numpy(),
                                   rtol=1e-5, atol=1e-6)
    empty_fc7, empty_probs = head_outputs(head, np.zeros((0, 12), np.float32))
    assert empty_fc7.shape == (0, 8) and empty_probs.shape == (0, 4)


def test_classification_metrics_by_hand():
    head = FCHead(2, 2, hidden=4).eval()
    with torch.no_grad():  # fc8 ignores fc7: constant logits that always predict class 1
        for layer in (head.fc6, head.fc7, head.fc8):
            layer.weight.zero_()
            layer.bias.zero_()
        head.fc8.bias.copy_(torch.tensor([0.0, np.log(2.0), 0.0]))
    metrics = classification_metrics(head, np.zeros((4, 2), np.float32), [1, 1, 0, 2])
    assert metrics["accuracy"] == 0.5 and metrics["fg_accuracy"] == pytest.approx(2 / 3)
    # softmax (1, 2, 1) / 4: the loss is the mean of -log(1/2), -log(1/2), -log(1/4), -log(1/4)
    assert metrics["loss"] == pytest.approx(np.log(2) * 1.5, rel=1e-5)
    only_bg = classification_metrics(head, np.zeros((1, 2), np.float32), [2])
    assert np.isnan(only_bg["fg_accuracy"])
