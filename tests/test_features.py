"""SPP-net window extraction (sppnet_lite.features): pooled vectors against roi_pool, the
scale choice, and the shared helpers (norm_scale, check_image, eval_mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import roi_pool

from sppnet_lite.features import (
    SPPFeatureExtractor,
    WindowExtractor,
    check_image,
    default_scales,
    eval_mode,
    norm_scale,
    resize_shorter_side,
    select_scales,
)
from sppnet_lite.rcnn import RCNNFeatureExtractor
from sppnet_lite.spp import project_boxes

LEVELS = (3, 2, 1)


class TinyTrunk(nn.Module):
    """A stand-in conv trunk: stride 4, 6 channels, canonical input 16 px."""

    stride = 4
    out_channels = 6
    canonical_size = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x):
        return self.layers(x)


def to_tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def test_default_scales():
    assert default_scales(224, multi_scale=True) == (480, 576, 688, 864, 1200)
    assert default_scales(224) == (688,)
    assert default_scales(96, multi_scale=True) == (208, 248, 296, 368, 512)
    assert default_scales(96) == (296,)
    with pytest.raises(ValueError, match="canonical_size"):
        default_scales(0)


def test_select_scales_hand_computed():
    # Image 100 x 200 (H x W): scale s resizes by s / 100. Canonical area 50² = 2500.
    boxes = np.array([[0, 0, 50, 50],     # area 2500 at scale 100 (f = 1)  -> index 0
                      [0, 0, 25, 25],     # 625 · 4 = 2500 at scale 200     -> index 1
                      [0, 0, 10, 10],     # 100 · 4 = 400 is closest        -> index 1
                      [0, 0, 200, 100],   # 20000 at f = 1 is closest       -> index 0
                      [0, 0, 40, 40]],    # 1600 (|-900|) vs 6400 (|3900|)  -> index 0
                     np.float32)
    assert select_scales(boxes, (100, 200), (100, 200), 50).tolist() == [0, 1, 1, 0, 0]
    # a tie: a 2 x 5 box covers 10 px at scale 100 and 40 px at scale 200, both 15 from 5²;
    # the smaller scale wins
    tie = np.array([[0, 0, 2, 5]], np.float32)
    assert select_scales(tie, (100, 100), (100, 200), 5).tolist() == [0]


def test_resize_shorter_side(image):
    resized, fx, fy = resize_shorter_side(image, 24)
    assert resized.shape == (24, 32, 3) and fx == fy == 0.5


def test_single_scale_matches_roi_pool_oracle(image, boxes):
    """At a scale equal to the image's shorter side, features are roi_pool of projected cells."""
    trunk = TinyTrunk()
    for rule in ("paper", "round"):
        extractor = SPPFeatureExtractor(trunk, LEVELS, scales=(48,), rule=rule, preprocess=to_tensor)
        out = extractor(image, boxes)
        assert out.dtype == torch.float32 and out.device.type == "cpu"
        assert out.shape == (4, extractor.output_dim) == (4, 6 * 14)
        with torch.no_grad():
            features = trunk(to_tensor(image))
        cells = project_boxes(boxes, 4, rule, feature_size=features.shape[-2:])
        rois = torch.cat([torch.zeros(4, 1), cells], dim=1)
        expected = torch.cat([roi_pool(features, rois, (n, n), 1.0).flatten(1) for n in LEVELS], 1)
        torch.testing.assert_close(out, expected)


def test_multi_scale_rows_equal_single_scale(image, boxes):
    trunk = TinyTrunk()
    scales = (24, 48, 96)
    multi = SPPFeatureExtractor(trunk, LEVELS, scales=scales, preprocess=to_tensor)
    out = multi(image, boxes)
    choice = select_scales(boxes, image.shape[:2], scales, trunk.canonical_size)
    assert len(set(choice.tolist())) > 1  # the case exercises several scales
    assert multi.last_timing["scales_run"] == [scales[k] for k in sorted(set(choice.tolist()))]
    for k, scale in enumerate(scales):
        rows = choice == k
        if rows.any():
            single = SPPFeatureExtractor(trunk, LEVELS, scales=(scale,), preprocess=to_tensor)
            torch.testing.assert_close(out[torch.from_numpy(rows)], single(image, boxes[rows]))


def test_roi_batching_and_empty_boxes(image, boxes):
    trunk = TinyTrunk()
    whole = SPPFeatureExtractor(trunk, LEVELS, scales=(48,), preprocess=to_tensor)
    batched = SPPFeatureExtractor(trunk, LEVELS, scales=(48,), preprocess=to_tensor, roi_batch=3)
    torch.testing.assert_close(whole(image, boxes), batched(image, boxes))
    assert whole(image, np.zeros((0, 4), np.float32)).shape == (0, whole.output_dim)
    timing = whole.last_timing
    assert {"conv", "pool", "total"} <= set(timing) and timing["total"] >= 0


def test_extractors_give_identical_output_length(image, boxes):
    trunk = TinyTrunk()
    spp = SPPFeatureExtractor(trunk, LEVELS, scales=(48,), preprocess=to_tensor)
    rcnn = RCNNFeatureExtractor(trunk, context=2, levels=LEVELS, preprocess=to_tensor)
    assert isinstance(spp, WindowExtractor) and isinstance(rcnn, WindowExtractor)
    assert spp.output_dim == rcnn.output_dim
    assert spp(image, boxes).shape == rcnn(image, boxes).shape == (len(boxes), spp.output_dim)


def test_backbone_mode_is_restored_and_checks(image, boxes):
    trunk = TinyTrunk().train()
    SPPFeatureExtractor(trunk, LEVELS, preprocess=to_tensor)(image, boxes)
    assert trunk.training
    with pytest.raises(ValueError, match="canonical_size"):
        SPPFeatureExtractor(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="rule"):
        SPPFeatureExtractor(trunk, rule="nearest")
    extractor = SPPFeatureExtractor(trunk, LEVELS, preprocess=to_tensor)
    with pytest.raises(ValueError, match="uint8"):
        extractor(image.astype(np.float32), boxes)
    with pytest.raises(ValueError, match=r"\(R, 4\)"):
        extractor(image, boxes[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(image, boxes):
    trunk = TinyTrunk()
    cpu = SPPFeatureExtractor(trunk, LEVELS, scales=(24, 48), preprocess=to_tensor)(image, boxes)
    cuda = SPPFeatureExtractor(trunk.cuda(), LEVELS, scales=(24, 48), preprocess=to_tensor)
    out = cuda(image, boxes)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, cpu, rtol=1e-4, atol=1e-4)


def test_select_scales_needs_a_scale():
    with pytest.raises(ValueError, match="scales"):
        select_scales(np.zeros((1, 4)), (10, 10), (), 5)
    with pytest.raises(ValueError, match="scales"):
        SPPFeatureExtractor(TinyTrunk(), scales=(8,))


def test_config_describes_the_extractor():
    config = SPPFeatureExtractor(TinyTrunk(), LEVELS, scales=(24, 48), rule="round").config
    assert config["kind"] == "spp" and config["levels"] == [3, 2, 1]
    assert config["scales"] == [24, 48] and config["rule"] == "round" and config["stride"] == 4.0
    assert config["preprocess"] == "sppnet_lite.backbone.preprocess"


def test_norm_scale_gives_a_mean_norm_of_20():
    rng = np.random.default_rng(0)
    vectors = rng.normal(3, 2, (500, 16)).astype(np.float32)
    s = norm_scale(vectors)
    assert np.linalg.norm(vectors * s, axis=1).mean() == pytest.approx(20.0, rel=1e-5)
    assert norm_scale(torch.from_numpy(vectors)) == s  # torch or NumPy, same number
    assert norm_scale(vectors, target_norm=1.0) == pytest.approx(s / 20)
    sampled = norm_scale(vectors, sample=100)  # a seeded subsample, close to the full mean
    assert sampled == pytest.approx(s, rel=0.05) and sampled == norm_scale(vectors, sample=100)
    assert norm_scale(np.zeros((0, 16), np.float32)) == 20.0


def test_check_image():
    image = np.zeros((4, 5, 3), np.uint8)[:, ::-1]
    checked = check_image(image)
    assert checked.flags["C_CONTIGUOUS"] and checked.shape == (4, 5, 3)
    for bad in (np.zeros((4, 5), np.uint8), np.zeros((4, 5, 4), np.uint8),
                np.zeros((4, 5, 3), np.float32)):
        with pytest.raises(ValueError, match=r"RGB uint8 \(H, W, 3\)"):
            check_image(bad)


def test_eval_mode_restores_the_previous_mode():
    module = nn.Dropout()
    for training in (True, False):
        module.train(training)
        with eval_mode(module):
            assert not module.training
        assert module.training == training
    module.train()
    with pytest.raises(RuntimeError), eval_mode(module):
        raise RuntimeError("fails inside")
    assert module.training
