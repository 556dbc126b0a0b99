"""The region proposal network: anchors, the head's output order, labels, sampling, targets,
the loss against torch's own, proposals, and the input-frame ↔ original-pixel round trip."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sppnet_lite.backbone import ZFLite
from sppnet_lite.boxes import box_iou, decode
from sppnet_lite.features import resize_shorter_side
from sppnet_lite.rpn import (
    ANCHOR_RATIOS,
    ANCHOR_SIZES,
    RegionProposalNetwork,
    RPNHead,
    anchor_coverage,
    anchor_targets,
    cell_anchors,
    feature_size,
    grid_anchors,
    label_anchors,
    propose,
    rpn_loss,
    sample_anchors,
)


# ------------------------------------------------------------------ anchors
def test_cell_anchors_have_the_asked_areas_and_ratios_sizes_major_centred_on_zero():
    cell = cell_anchors()
    assert cell.shape == (3 * len(ANCHOR_SIZES), 4) and cell.dtype == np.float32
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    sizes = np.repeat(ANCHOR_SIZES, len(ANCHOR_RATIOS))
    ratios = np.tile(ANCHOR_RATIOS, len(ANCHOR_SIZES))
    np.testing.assert_allclose(w * h, sizes.astype(float) ** 2, rtol=1e-5)
    np.testing.assert_allclose(h / w, ratios, rtol=1e-5)
    np.testing.assert_allclose(cell[:, :2] + cell[:, 2:], 0, atol=1e-4)


def test_grid_anchors_on_a_2x3_map_by_hand():
    cell = np.array([[-8, -8, 8, 8], [-16, -4, 16, 4]], np.float32)
    expected = np.array([
        [-8, -8, 8, 8], [-16, -4, 16, 4],    # cell (0, 0), centre (0, 0)
        [8, -8, 24, 8], [0, -4, 32, 4],      # cell (0, 1), centre (16, 0)
        [24, -8, 40, 8], [16, -4, 48, 4],    # cell (0, 2), centre (32, 0)
        [-8, 8, 8, 24], [-16, 12, 16, 20],   # cell (1, 0), centre (0, 16)
        [8, 8, 24, 24], [0, 12, 32, 20],     # cell (1, 1), centre (16, 16)
        [24, 8, 40, 24], [16, 12, 48, 20],   # cell (1, 2), centre (32, 16)
    ], np.float32)
    np.testing.assert_array_equal(grid_anchors(2, 3, 16, cell), expected)


@pytest.mark.parametrize("input_size", [(64, 64), (100, 75), (33, 129)])
def test_feature_size_is_zflites_real_conv5_size(input_size):
    trunk = ZFLite((4, 4, 4, 4, 4)).eval()
    with torch.no_grad():
        features = trunk(torch.zeros(1, 3, *input_size))
    assert tuple(features.shape[-2:]) == feature_size(input_size)


def test_a_ground_truth_equal_to_an_anchor_is_covered_with_iou_1():
    # 200 × 300 at scale 100 → input 100 × 150 (factor 0.5), conv5 7 × 10; the 32-px square
    # anchor of cell (i=2, j=3) is input [32, 16, 64, 48], original [64, 32, 128, 96]
    gts = [np.array([[64, 32, 128, 96], [0, 0, 300, 200]], np.float32),
           np.array([[10, 10, 30, 30]], np.float32)]
    coverage = anchor_coverage(gts, [(200, 300), (100, 100)], 100, sizes=(32,), ratios=(1.0,))
    assert coverage.shape == (3,)
    assert coverage[0] == pytest.approx(1.0)
    assert 0 < coverage[1] < 0.2  # the whole image against 32-px anchors
    assert coverage[2] == pytest.approx(20 * 20 / 32 ** 2)  # inside cell (1, 1)'s [0, 0, 32, 32]


# ------------------------------------------------------------------ the head
def test_head_outputs_follow_grid_anchor_order():
    height, width, k = 3, 4, 2
    head = RPNHead(in_channels=3, num_anchors=k, mid_channels=3)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.weight[[0, 1, 2], [0, 1, 2], 1, 1] = 1.0  # identity: hidden = features
        # objectness channel a = 100·i + 10·j + a; deltas channel 4a + c = 100·i + 10·j + 4a + c
        head.objectness.weight[:, :, 0, 0] = torch.tensor([[100.0, 10.0, a] for a in range(k)])
        head.deltas.weight[:, :, 0, 0] = torch.tensor([[100.0, 10.0, ch] for ch in range(4 * k)])
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    features = torch.stack([i, j, torch.ones_like(i)]).float()[None]
    objectness, deltas = head(features)
    assert objectness.shape == (height * width * k,) and deltas.shape == (height * width * k, 4)
    for ii in range(height):
        for jj in range(width):
            for a in range(k):
                index = (ii * width + jj) * k + a
                assert objectness[index] == 100 * ii + 10 * jj + a
                assert deltas[index].tolist() == [100 * ii + 10 * jj + 4 * a + c for c in range(4)]


def test_head_initialisation_is_the_papers():
    head = RPNHead(128, 12)
    for layer in (head.conv, head.objectness, head.deltas):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert not layer.bias.any()


# ------------------------------------------------------------------ labels, sampling, targets
ANCHORS = np.array([
    [10, 10, 50, 50],   # 0: IoU 0.95 with gt 0 → positive
    [60, 60, 72, 90],   # 1: IoU 0.4 with gt 1, its best → positive (best-anchor rule)
    [78, 60, 90, 90],   # 2: IoU 0.4 with gt 1 too, a tie → positive
    [0, 60, 20, 80],    # 3: overlaps nothing → negative
    [10, 10, 50, 31],   # 4: IoU 0.5 with gt 0, not its best → ignored
    [-2, 10, 50, 52],   # 5: IoU 0.77 with gt 0 but crosses the left border → ignored
], np.float32)
GT = np.array([[10, 10, 50, 52], [60, 60, 90, 90], [0, 92, 8, 100]], np.float32)
# gt 2 overlaps no anchor: the best-anchor rule must not turn IoU-0 anchors positive


def test_label_anchors_by_the_papers_rules():
    labels, matched = label_anchors(ANCHORS, GT, (100, 100))
    assert labels.tolist() == [1, 1, 1, 0, -1, -1]
    assert matched.tolist()[:3] == [0, 1, 1] and matched[4] == 0 and matched[5] == -1
    labels, matched = label_anchors(ANCHORS, GT, (100, 100), allowed_border=2)
    assert labels[5] == 1 and matched[5] == 0


def test_label_anchors_without_ground_truth_are_negative_inside_the_image():
    labels, matched = label_anchors(ANCHORS, np.zeros((0, 4)), (100, 100))
    assert labels.tolist() == [0, 0, 0, 0, 0, -1]
    assert (matched == -1).all()
    labels, matched = label_anchors(ANCHORS[5:], GT, (100, 100))  # no anchor inside
    assert labels.tolist() == [-1] and matched.tolist() == [-1]


def _labels(num_pos, num_neg, num_ignored, seed=0):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignored)
    return np.random.default_rng(seed).permutation(labels)


def test_sample_anchors_proportions_padding_and_seed():
    labels = _labels(1000, 5000, 300)
    sampled = sample_anchors(labels, np.random.default_rng(1))
    assert (sampled == 1).sum() == 128 and (sampled == 0).sum() == 128
    assert (labels[sampled >= 0] == sampled[sampled >= 0]).all()  # only relabels to -1
    few = _labels(10, 5000, 300)
    sampled = sample_anchors(few, np.random.default_rng(1))
    assert (sampled == 1).sum() == 10 and (sampled == 0).sum() == 246
    tiny = _labels(10, 20, 5)
    np.testing.assert_array_equal(sample_anchors(tiny, np.random.default_rng(1)), tiny)
    np.testing.assert_array_equal(sample_anchors(labels, np.random.default_rng(7)),
                                  sample_anchors(labels, np.random.default_rng(7)))


def test_anchor_targets_decode_back_to_the_matched_ground_truth():
    _, matched = label_anchors(ANCHORS, GT, (100, 100))
    targets = anchor_targets(ANCHORS, GT, matched)
    inside = matched >= 0
    np.testing.assert_allclose(decode(ANCHORS[inside], targets[inside]), GT[matched[inside]], atol=1e-3)
    assert not targets[~inside].any()


# ------------------------------------------------------------------ the loss
def test_rpn_loss_matches_torchs_losses_on_the_sampled_anchors():
    g = torch.Generator().manual_seed(0)
    objectness = torch.randn(50, generator=g, requires_grad=True)
    deltas = torch.randn(50, 4, generator=g, requires_grad=True)
    targets = torch.randn(50, 4, generator=g) * 0.2
    labels = torch.randint(-1, 2, (50,), generator=g)
    total, classification, box = rpn_loss(objectness, deltas, labels.numpy(), targets.numpy(),
                                          box_weight=2.0)
    s, p = labels >= 0, labels == 1
    expected_cls = F.binary_cross_entropy_with_logits(objectness[s], labels[s].float())
    expected_box = F.smooth_l1_loss(deltas[p], targets[p], beta=1 / 9, reduction="sum") / s.sum()
    torch.testing.assert_close(classification, expected_cls)
    torch.testing.assert_close(box, expected_box)
    torch.testing.assert_close(total, expected_cls + 2.0 * expected_box)
    total.backward()
    assert not objectness.grad[~s].any() and not deltas.grad[~p].any()


# ------------------------------------------------------------------ proposals
def _random_rpn_outputs(seed=0, height=7, width=9):
    anchors = grid_anchors(height, width)
    rng = np.random.default_rng(seed)
    return rng.normal(size=len(anchors)).astype(np.float32), \
        rng.normal(scale=0.3, size=(len(anchors), 4)).astype(np.float32), anchors


def test_propose_keeps_few_sorted_non_overlapping_boxes_inside_the_image():
    objectness, deltas, anchors = _random_rpn_outputs()
    boxes, scores = propose(objectness, deltas, anchors, (100, 140), pre_nms_top_n=500,
                            post_nms_top_n=40, nms_iou=0.5, min_size=6.0)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and len(boxes) == 40
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 140).all() and (boxes[:, 3] <= 100).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 6.0).all()
    assert (np.diff(scores) <= 0).all() and ((scores > 0) & (scores < 1)).all()
    iou = box_iou(boxes, boxes)
    assert (iou[~np.eye(len(boxes), dtype=bool)] <= 0.5).all()
    same = propose(torch.from_numpy(objectness), torch.from_numpy(deltas), anchors, (100, 140),
                   500, 40, 0.5, 6.0)
    np.testing.assert_array_equal(same[0], boxes)


def test_propose_with_zero_deltas_returns_the_anchors_and_drops_small_boxes():
    anchors = np.array([[10, 10, 40, 40], [50, 5, 90, 30], [0, 0, 2, 2], [20, 50, 60, 95]],
                       np.float32)
    objectness = np.array([0.5, -1.0, 3.0, 1.0], np.float32)  # the 2-px box scores best
    boxes, scores = propose(objectness, np.zeros((4, 4)), anchors, (100, 100), nms_iou=1.0,
                            min_size=4.0)
    np.testing.assert_array_equal(boxes, anchors[[3, 0, 1]])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-objectness[[3, 0, 1]])), rtol=1e-6)


def test_rpn_proposals_are_original_pixels_inside_a_non_square_image():
    image_size = (120, 200)
    resized, fx, fy = resize_shorter_side(np.zeros((*image_size, 3), np.uint8), 64)
    assert resized.shape[:2] == (64, 107) and fx != fy  # fx = 0.535, fy = 0.5333
    rpn = RegionProposalNetwork(8)
    assert rpn.num_anchors == 3 * len(ANCHOR_SIZES)
    features = torch.randn(1, 8, *feature_size((64, 107)), generator=torch.Generator().manual_seed(0))
    boxes, scores = rpn.proposals(features, image_size, fx, fy, post_nms_top_n=50, min_size=2.0)
    assert 0 < len(boxes) <= 50 and len(scores) == len(boxes)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 120).all()
    assert boxes[:, 2].max() > 190  # boxes clipped at the input's 107 px map back to ~200
    objectness, deltas = rpn(features)
    expected, _ = propose(objectness.detach(), deltas.detach(), rpn.anchors(4, 7), (64, 107),
                          post_nms_top_n=50, min_size=2.0)
    np.testing.assert_allclose(boxes, np.clip(expected / [fx, fy, fx, fy], 0, [200, 120, 200, 120]),
                               rtol=1e-5)
