"""The window store (sppnet_lite.window_store): pooled window vectors on disk, never stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_features import LEVELS, TinyTrunk, to_tensor

from sppnet_lite.features import SPPFeatureExtractor
from sppnet_lite.window_store import WindowStore, state_dict_hash


def _store(tmp_path, checkpoint="abc", scales=(48,)):
    extractor = SPPFeatureExtractor(TinyTrunk(), LEVELS, scales=scales, preprocess=to_tensor)
    return WindowStore.for_extractor(extractor, root=tmp_path, checkpoint_hash=checkpoint), extractor


def test_store_round_trip(tmp_path, image, boxes):
    store, extractor = _store(tmp_path)
    pooled = extractor(image, boxes)
    store.put("img_001", pooled, boxes, image_hash="h1", labels=np.arange(4))
    assert store.dir.name.startswith("windows-") and store.dir.parent == tmp_path
    assert (store.dir / "img_001.pooled.npy").is_file()
    assert store.has("img_001") and store.has("img_001", boxes, "h1")
    entry = store.get("img_001", boxes)
    assert isinstance(entry["pooled"], np.memmap) and entry["pooled"].dtype == np.float16
    np.testing.assert_allclose(entry["pooled"], pooled.numpy(), rtol=1e-3, atol=1e-3)
    assert not isinstance(store.get("img_001", mmap=False)["pooled"], np.memmap)
    np.testing.assert_array_equal(entry["boxes"], boxes)
    assert entry["labels"].tolist() == [0, 1, 2, 3] and entry["image_hash"] == "h1"
    assert store.image_ids() == ["img_001"]
    stacked = store.load(["img_001", "img_001"])
    assert stacked["pooled"].shape == (8, extractor.output_dim)
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


def test_store_key_follows_the_weights(tmp_path):
    # without a checkpoint hash the weights themselves are hashed
    trunk = TinyTrunk()
    before = state_dict_hash(trunk)
    assert state_dict_hash(TinyTrunk()) == before
    with torch.no_grad():
        trunk.layers[0].weight[0, 0, 0, 0] += 1
    assert state_dict_hash(trunk) != before
    extractor = SPPFeatureExtractor(trunk, LEVELS, scales=(48,), preprocess=to_tensor)
    hashed = WindowStore.for_extractor(extractor, root=tmp_path)
    assert hashed.key["checkpoint"] == state_dict_hash(trunk)
    trunk.checkpoint_hash = "pretrained-abc"  # a named checkpoint wins over hashing weights
    named = WindowStore.for_extractor(extractor, root=tmp_path, name="train")
    assert named.key["checkpoint"] == "pretrained-abc" and named.dir.name.startswith("train-")
    assert named.key["extractor"] == extractor.config


def test_store_checks_its_inputs_and_its_key(tmp_path, image, boxes):
    store, extractor = _store(tmp_path)
    pooled = extractor(image, boxes)
    with pytest.raises(ValueError, match=r"\(K, D\) with K = len\(boxes\) = 3"):
        store.put("a", pooled, boxes[:3])
    with pytest.raises(ValueError, match="may not be named"):
        store.put("a", pooled, boxes, rows=np.zeros(4))
    with pytest.raises(ValueError, match="image_ids is empty"):
        store.load([])
    (store.dir / "key.json").write_text('{"store_version": 0}')
    with pytest.raises(ValueError, match="key.json does not match"):
        _store(tmp_path)


def test_store_interrupted_put_is_invisible(tmp_path, image, boxes, monkeypatch):
    store, extractor = _store(tmp_path)
    pooled = extractor(image, boxes)
    store.put("a", pooled, boxes)

    def broken_save(file, array, **kwargs):
        file.write(b"partial")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed"):
        store.put("a", pooled[:2], boxes[:2])
    monkeypatch.undo()
    assert not store.has("a")  # the old entry is gone, the new one never appeared
    assert sorted(p.name for p in store.dir.iterdir()) == ["a.pooled.npy", "key.json"]


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
