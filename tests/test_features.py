"""SPP-net feature extraction and the feature store (sppnet_lite.features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import roi_pool

from sppnet_lite.features import (
    FeatureStore,
    SPPFeatureExtractor,
    default_scales,
    resize_shorter_side,
    select_scales,
    state_dict_hash,
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


@pytest.fixture()
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture()
def boxes():
    return np.array([[0, 0, 64, 48], [4, 4, 20, 28], [30, 10, 33, 13], [40, 20, 64, 48]],
                    np.float32)


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


# ----------------------------------------------------------------------------------------
# FeatureStore
# ----------------------------------------------------------------------------------------

def _store(tmp_path, checkpoint="abc", scales=(48,)):
    extractor = SPPFeatureExtractor(TinyTrunk(), LEVELS, scales=scales, preprocess=to_tensor)
    return FeatureStore.for_extractor(extractor, root=tmp_path, checkpoint_hash=checkpoint), extractor


def test_store_round_trip(tmp_path, image, boxes):
    store, extractor = _store(tmp_path)
    features = extractor(image, boxes)
    store.put("img_001", features, boxes, image_hash="h1", labels=np.arange(4))
    assert store.has("img_001") and store.has("img_001", boxes, "h1")
    entry = store.get("img_001", boxes)
    assert isinstance(entry["features"], np.memmap) and entry["features"].dtype == np.float16
    np.testing.assert_allclose(entry["features"], features.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(entry["boxes"], boxes)
    assert entry["labels"].tolist() == [0, 1, 2, 3] and entry["image_hash"] == "h1"
    assert store.image_ids() == ["img_001"]
    stacked = store.load(["img_001", "img_001"])
    assert stacked["features"].shape == (8, extractor.output_dim)
    assert stacked["image_index"].tolist() == [0] * 4 + [1] * 4


def test_store_rejects_stale_entries(tmp_path, image, boxes):
    store, extractor = _store(tmp_path)
    store.put("a", extractor(image, boxes), boxes, image_hash="h1")
    assert not store.has("a", boxes[:2]) and not store.has("a", image_hash="other")
    assert store.has("a", extra={}) and not store.has("a", extra={"labels": np.zeros(4)})
    with pytest.raises(KeyError):
        store.get("a", boxes[:2])
    with pytest.raises(KeyError):
        store.get("missing")
    # another checkpoint or extractor config is another store: nothing to read there
    other_weights, _ = _store(tmp_path, checkpoint="def")
    other_scales, _ = _store(tmp_path, scales=(24, 48))
    assert other_weights.dir != store.dir != other_scales.dir
    assert not other_weights.has("a") and not other_scales.has("a")
    # without a checkpoint hash the weights themselves are hashed
    trunk = TinyTrunk()
    before = state_dict_hash(trunk)
    with torch.no_grad():
        trunk.layers[0].weight[0, 0, 0, 0] += 1
    assert state_dict_hash(trunk) != before


def test_store_interrupted_put_is_invisible(tmp_path, image, boxes, monkeypatch):
    store, extractor = _store(tmp_path)
    features = extractor(image, boxes)
    store.put("a", features, boxes)

    def broken_save(file, array, **kwargs):
        file.write(b"partial")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed"):
        store.put("a", features[:2], boxes[:2])
    monkeypatch.undo()
    assert not store.has("a")  # the old entry is gone, the new one never appeared
    assert sorted(p.name for p in store.dir.iterdir()) == ["a.features.npy", "key.json"]


def test_store_build_resumes(tmp_path, image, boxes):
    from types import SimpleNamespace

    store, extractor = _store(tmp_path)
    dataset = [SimpleNamespace(image=image, image_id=f"im{i}") for i in range(3)]
    calls = []

    def counting(img, bxs):
        calls.append(len(bxs))
        return extractor(img, bxs)

    store.build(dataset[:2], counting, lambda i, s: boxes, progress=False)
    assert len(calls) == 2
    store.build(dataset, counting, lambda i, s: {"boxes": boxes, "labels": np.ones(4)},
                progress=False)
    assert len(calls) == 5  # the new image, and the two whose extra arrays changed
    assert store.get("im0")["labels"].tolist() == [1, 1, 1, 1]
    store.build(dataset, counting, lambda i, s: {"boxes": boxes, "labels": np.ones(4)},
                progress=False)
    assert len(calls) == 5  # nothing changed: all read
    store.build(dataset, counting, lambda i, s: boxes[:3], progress=False)
    assert len(calls) == 8  # changed boxes: all recomputed
    assert store.get("im2")["boxes"].shape == (3, 4)
    assert (store.dir / "index.json").exists()
