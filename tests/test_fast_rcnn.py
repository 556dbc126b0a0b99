"""Fast R-CNN: gradients through ROI pooling, the hierarchical sampler, the multi-task loss,
truncated SVD, and a tiny train → detect → evaluate → save → load → resume cycle."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sppnet_lite.backbone import ZFLite
from sppnet_lite.cache import load_arrays
from sppnet_lite.fast_rcnn import (
    BBOX_STDS,
    FastRCNN,
    FastRCNNDetector,
    FastRCNNHead,
    flip_boxes,
    hierarchical_minibatch,
    jitter_boxes,
    label_rois,
    multitask_loss,
    sample_rois,
    smooth_l1,
    truncated_svd,
)
from sppnet_lite.spp import roi_spp


# ------------------------------------------------------------------ gradients through pooling
def test_a_max_pooled_bin_sends_its_gradient_to_the_argmax_cell_summed_over_windows():
    features = torch.zeros(1, 1, 4, 4)
    features[0, 0, 1, 1] = 5.0  # the maximum of both windows below
    features[0, 0, 3, 3] = 2.0  # inside the second window only
    features.requires_grad_(True)
    rois = torch.tensor([[0, 0, 0, 2, 2], [0, 1, 1, 3, 3]], dtype=torch.float32)  # inclusive cells
    pooled = roi_spp(features, rois, 1.0, levels=(1,))
    assert pooled.flatten().tolist() == [5.0, 5.0]
    pooled.sum().backward()
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 1] = 2.0  # chosen by both windows: 1 + 1; every other cell gets nothing
    assert torch.equal(features.grad, expected)


def test_roi_spp_gradient_matches_numerical_differences():
    torch.manual_seed(0)
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64).relu().add(
        torch.rand(1, 2, 6, 7, dtype=torch.float64)).requires_grad_(True)  # distinct values
    rois = torch.tensor([[0, 0, 0, 5, 4], [0, 2, 1, 6, 5], [0, 1, 1, 2, 2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_spp(f, rois, 1.0, (3, 2, 1)), (features,))


def test_fast_rcnn_trains_conv3_and_up_with_batch_norm_fixed():
    trunk = ZFLite((4, 4, 4, 4, 4))
    net = FastRCNN(trunk, FastRCNNHead(4 * 50, 2, 8), fine_tune_from="conv3").train()
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False, False, True, True, True]
    assert not any(p.requires_grad for m in trunk.modules()
                   if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert all(not m.training for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net.head.training
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    logits, deltas = net([image], [np.array([[0, 0, 40, 40], [10, 5, 80, 64]], np.float32)], [64])
    (logits.sum() + deltas.sum()).backward()
    assert convs[2].weight.grad is not None and convs[1].weight.grad is None
    frozen = FastRCNN(ZFLite((4, 4, 4, 4, 4)), FastRCNNHead(200, 2, 8), fine_tune_from="none")
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    with pytest.raises(ValueError, match="fine_tune_from"):
        FastRCNN(trunk, FastRCNNHead(200, 2, 8), fine_tune_from="conv9")


# ------------------------------------------------------------------ the sampler
def _rois(rng, num_classes=3):
    gt = np.array([[10, 10, 60, 60], [100, 40, 180, 120]], np.float32)
    near = jitter_boxes(gt, 20, rng, shift=0.3, scale=0.3)
    far = np.concatenate([rng.uniform(0, 150, (200, 2)), rng.uniform(0, 150, (200, 2)) + 30], 1)
    return label_rois(np.concatenate([near, far]).astype(np.float32), gt, [0, 2], num_classes)


def test_sample_rois_keeps_a_quarter_foreground_and_labels_background_as_k():
    rng = np.random.default_rng(0)
    rois = _rois(rng)
    boxes, labels, targets = sample_rois(rois, 3, rng, 64, 0.25, 0.5, (0.1, 0.5))
    assert len(boxes) == len(labels) == len(targets) == 64
    assert (labels < 3).sum() == 16 and set(labels[:16]) <= {0, 2} and (labels[16:] == 3).all()
    ious = label_rois(boxes, rois["boxes"][:2], [0, 2], 3)["ious"][2:]  # after the 2 gts
    assert (ious[:16] >= 0.5).all() and ((ious[16:] >= 0.1) & (ious[16:] < 0.5)).all()


def test_sample_rois_fills_with_background_when_foreground_is_scarce():
    rng = np.random.default_rng(1)
    gt = np.array([[10, 10, 60, 60]], np.float32)
    rois = label_rois(np.array([[0, 0, 200, 200]] * 80, np.float32), gt, [1], 2)
    labels = sample_rois(rois, 2, rng, 64)[1]
    assert (labels == 1).sum() == 1 and (labels == 2).sum() == 63  # only the ground truth is fg


def test_a_hierarchical_minibatch_takes_64_windows_from_each_of_2_images():
    rng = np.random.default_rng(2)
    rois = [_rois(rng) for _ in range(10)]
    batch = hierarchical_minibatch(rois, 3, rng)
    assert len(batch) == 2 and batch[0][0] != batch[1][0]
    assert [len(b[1]) for b in batch] == [64, 64]


def test_targets_are_normalised_deltas_and_flip_mirrors_boxes():
    rois = label_rois(np.array([[12, 10, 62, 64]], np.float32), np.array([[10, 10, 60, 60]]), [0], 1)
    from sppnet_lite.boxes import decode

    back = decode(rois["boxes"][1:], rois["targets"][1:] * np.array(BBOX_STDS))
    np.testing.assert_allclose(back, [[10, 10, 60, 60]], atol=1e-4)
    boxes = np.array([[10, 5, 30, 25]], np.float32)
    np.testing.assert_array_equal(flip_boxes(boxes, 100), [[70, 5, 90, 25]])
    np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, 100), 100), boxes)


# ------------------------------------------------------------------ the loss
def test_smooth_l1_matches_torch():
    x = torch.linspace(-3, 3, 61)
    for beta in (1.0, 0.5):
        torch.testing.assert_close(smooth_l1(x, beta), F.smooth_l1_loss(x, torch.zeros_like(x),
                                                                         reduction="none", beta=beta))


def test_the_box_term_ignores_background_windows_and_other_classes():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    deltas = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2])  # K = 2: two background windows
    targets = torch.randn(4, 4)
    total, classification, box = multitask_loss(logits, deltas, labels, targets)
    total.backward()
    assert torch.all(deltas.grad[2:] == 0)  # background: no box
    assert torch.all(deltas.grad[0, 4:] == 0) and torch.all(deltas.grad[1, :4] == 0)  # other class
    expected = (F.smooth_l1_loss(deltas[0, :4], targets[0], reduction="sum")
                + F.smooth_l1_loss(deltas[1, 4:], targets[1], reduction="sum")) / 4
    torch.testing.assert_close(box, expected)
    torch.testing.assert_close(classification, F.cross_entropy(logits, labels))
    torch.testing.assert_close(total, classification + box)
    none = multitask_loss(logits, deltas, torch.tensor([2, 2, 2, 2]), targets)
    assert none[2].item() == 0.0


# ------------------------------------------------------------------ truncated SVD
def test_truncated_svd_is_exact_at_full_rank_and_close_at_high_rank():
    torch.manual_seed(0)
    head = FastRCNNHead(40, 3, 16).eval()
    x = torch.randn(5, 40)
    full = truncated_svd(head, 16, 16)
    torch.testing.assert_close(full(x)[0], head(x)[0])
    thin = truncated_svd(head, 12, 12)
    assert thin.fc6[0].weight.shape == (12, 40) and thin.fc6[1].weight.shape == (16, 12)
    assert not isinstance(head.fc6, torch.nn.Sequential)  # the original is untouched
    lower = truncated_svd(head, 4, 4)
    assert (thin(x)[0] - head(x)[0]).abs().mean() < (lower(x)[0] - head(x)[0]).abs().mean()


# ------------------------------------------------------------------ training end to end
def _config(**changes):
    from sppnet_lite.fast_rcnn_training import FastRCNNConfig

    settings = {"scales": (160,), "test_scales": (160,), "iterations": 300, "hidden": 64,
                "fine_tune_from": "all",
                "trunk_lr": 1e-3, "rois_per_image": 32, "jittered_per_gt": 2,
                **changes}
    return FastRCNNConfig.default(True, **settings)


def _pipeline(data, run, **changes):
    from sppnet_lite.fast_rcnn_training import FastRCNNPipeline

    return FastRCNNPipeline(data, run, quick=True, device="cpu", config=_config(**changes),
                            progress=False)


def test_train_detect_evaluate_save_load(tiny_voc, tmp_path, fast):
    from sppnet_lite.evaluate import evaluate_detections, evaluate_detector

    pipe = _pipeline(tiny_voc, tmp_path / "run")
    detector = pipe.run()
    train = pipe.dataset("train")
    history = pipe.network()[1]
    assert np.mean(history["loss"][-20:]) < 0.75 * np.mean(history["loss"][:20])
    report = evaluate_detector(detector, train, pipe.proposals("train"), progress=False)
    rng = np.random.default_rng(0)
    chance = evaluate_detections(  # the same windows with random scores
        [detector.postprocess(detector.score(detector.pool(s.image, p)), p, s.image.shape[:2],
                              rng.random((len(p), 6)), regression=False)
         for s, p in zip(train, pipe.proposals("train"))], train, detector.class_names).mAP
    assert report["results"]["detector"].mAP > 0.3 > 3 * chance
    loaded = FastRCNNDetector.load(tmp_path / "run")
    sample, proposals = train[0], pipe.proposals("train")[0]
    a = detector.detect(sample.image, proposals=proposals)
    b = loaded.detect(sample.image, proposals=proposals)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    from sppnet_lite.detector import SPPNetDetector

    with pytest.raises(ValueError, match="fast-rcnn detector"):
        SPPNetDetector.load(tmp_path / "run")


def test_an_interrupted_training_resumes_where_it_stopped(tiny_voc, tmp_path, fast, monkeypatch):
    from sppnet_lite import fast_rcnn_training as frt

    whole = _pipeline(tiny_voc, tmp_path / "whole", iterations=12).network()[0]
    calls = {"n": 0}
    real = frt.multitask_loss

    def dies_at_the_eighth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(frt, "multitask_loss", dies_at_the_eighth_batch)
    with pytest.raises(KeyboardInterrupt):
        _pipeline(tiny_voc, tmp_path / "cut", iterations=12, checkpoint_seconds=0).network()
    monkeypatch.setattr(frt, "multitask_loss", real)
    resumed_pipe = _pipeline(tiny_voc, tmp_path / "cut", iterations=12, checkpoint_seconds=0)
    assert load_arrays(resumed_pipe.checkpoint_path())[1]["iteration"] == 7
    resumed, history = resumed_pipe.network()
    assert len(history["loss"]) == 12
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
