"""Chapter 04's warp / crop / SPP classification pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sppnet_lite import train
from sppnet_lite.backbone import Classifier, ZFLite


def image(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height,width", [(64, 192), (150, 90), (96, 96), (40, 41)])
def test_transforms(height, width):
    im = image(height, width)
    assert train.warp(im, 96).shape == (96, 96, 3)
    assert train.center_crop(im, 96).shape == (96, 96, 3)
    out = train.resize_shorter(im, 96)
    assert min(out.shape[:2]) == 96 and max(out.shape[:2]) % 16 == 0
    assert (out.shape[1] >= out.shape[0]) == (width >= height)
    assert abs(max(out.shape[:2]) - 96 * max(height, width) / min(height, width)) <= 8
    with pytest.raises(ValueError, match="method"):
        train.transform("stretch", im, 96)


def test_center_crop_keeps_the_middle():
    im = np.zeros((96, 288, 3), np.uint8)
    im[:, 96:192] = 255  # the middle third is white
    assert (train.center_crop(im, 96) == 255).all()


def test_bucket_batches_never_mix_shapes():
    images = [image(96, 96)] * 5 + [image(96, 160)] * 7 + [image(128, 96)]
    batches = train.bucket_batches(images, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(13))
    for idx in batches:
        assert len(idx) <= 3 and len({images[i].shape for i in idx}) == 1


@pytest.mark.parametrize("method", train.METHODS)
def test_train_and_predict_tiny(method):
    images = [image(48 + 8 * (i % 3), 64 + 16 * (i % 2)) for i in range(8)]
    labels = np.arange(8, dtype=np.int64) % 3
    sizes = [48, 32] if method == "spp-multi" else [48]
    net = train.train_classifier(method, images, labels, 3, ZFLite(widths=(8, 8, 8, 8, 8)),
                                 epochs=2, sizes=sizes, batch_size=4, progress=False)
    assert not net.training
    pred = train.predict(net, method, images, 48)
    assert pred.shape == (8,) and pred.dtype == np.int64 and set(pred) <= {0, 1, 2}


def test_history_records_every_step_and_the_epochwise_size_switch():
    images = [image(48 + 8 * (i % 3), 64 + 16 * (i % 2)) for i in range(8)]
    labels = np.arange(8, dtype=np.int64) % 3
    args = ("spp-multi", images, labels, 3)
    kwargs = {"epochs": 3, "sizes": [48, 32], "batch_size": 3, "progress": False}
    history = []
    net = train.train_classifier(*args, small_trunk(), **kwargs, history=history)
    plain = train.train_classifier(*args, small_trunk(), **kwargs)
    torch.testing.assert_close(net.state_dict(), plain.state_dict(), rtol=0, atol=0)
    assert [h["epoch"] for h in history] == sorted(h["epoch"] for h in history)
    for epoch in range(3):
        steps = [h for h in history if h["epoch"] == epoch]
        assert {h["size"] for h in steps} == {[48, 32][epoch % 2]}
        assert sum(h["shape"][0] for h in steps) == len(images)  # every image once per epoch
    for h in history:
        count, height, width = h["shape"]
        assert 1 <= count <= 3 and min(height, width) == h["size"]
        assert isinstance(h["loss"], float) and np.isfinite(h["loss"])


def test_train_rejects_two_sizes_for_fixed_methods():
    with pytest.raises(ValueError, match="one fixed size"):
        train.train_classifier("warp", [image(40, 40)], np.zeros(1, np.int64), 2,
                               ZFLite(widths=(8, 8, 8, 8, 8)), 1, [48, 32], progress=False)


def test_accuracy_by_bin_by_hand():
    correct = np.array([True, False, True, True, False])
    values = np.array([0.1, 0.15, 0.5, 0.55, 0.9])
    out = train.accuracy_by_bin(correct, values, [0.0, 0.3, 0.6, 1.0])
    assert out["count"] == [2, 2, 1]
    assert out["accuracy"] == [0.5, 1.0, 0.0]
    np.testing.assert_allclose(out["centers"], [0.15, 0.45, 0.8])
    empty = train.accuracy_by_bin(correct, values, [0.0, 0.05, 1.0])
    assert np.isnan(empty["accuracy"][0]) and empty["count"] == [0, 5]


def small_trunk():
    torch.manual_seed(0)
    return ZFLite(widths=(8, 8, 8, 8, 8))


def test_training_follows_the_seed_and_leaves_the_global_random_state_alone():
    images = [image(48, 64 + 16 * (i % 2)) for i in range(6)]
    labels = np.arange(6, dtype=np.int64) % 3
    nets = []
    for global_seed in (1, 2):  # dropout must not draw from the global generator
        trunk = small_trunk()
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        nets.append(train.train_classifier("spp", images, labels, 3, trunk, epochs=2, sizes=[48],
                                           batch_size=4, progress=False))
        assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(nets[0].state_dict(), nets[1].state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("method,levels", [("crop", (4, 3, 2, 1)), ("crop", (6, 3, 2, 1)),
                                           ("warp", (1,)), ("spp", (2, 1))])
def test_levels_give_an_spp_head_on_the_methods_input(method, levels):
    from sppnet_lite.spp import SpatialPyramidPooling

    images = [image(48, 64 + 16 * (i % 2)) for i in range(4)]
    labels = np.arange(4, dtype=np.int64) % 2
    net = train.train_classifier(method, images, labels, 2, small_trunk(), epochs=1, sizes=[48],
                                 batch_size=4, progress=False, levels=levels)
    assert isinstance(net.pool, SpatialPyramidPooling) and net.pool.levels == levels
    assert net.fc[1].in_features == 8 * sum(n * n for n in levels)
    assert train.predict(net, method, images, 48).shape == (4,)
    with pytest.raises(ValueError, match="positive integer"):
        train.train_classifier(method, images, labels, 2, small_trunk(), 1, [48], levels=(4, 0))


def test_the_fixed_size_head_is_one_3x3_level_on_a_96_crop():
    """What PYRAMIDS' "no SPP" entry says: on a 96×96 input (conv5 6×6) the FC head pools
    exactly what an SPP layer with the single level 3 pools, in the same order."""
    from sppnet_lite.spp import SpatialPyramidPooling

    net = Classifier(small_trunk(), 6, head="fc", fixed_size=96).eval()
    features = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(net.pool(features), SpatialPyramidPooling((3,))(features))
    assert train.PYRAMIDS["no SPP"] is None
    assert [sum(n * n for n in levels) for levels in train.PYRAMIDS.values() if levels] == [30, 50]


def use_tiny_experiment(monkeypatch, tmp_path):
    """Chapter 04's experiment at toy size, cached under ``tmp_path``: 6 training and 5 test
    images of 48–64 px, one epoch, a small trunk standing in for the pretrained one. Returns
    the settings dict ``experiment_config`` now gives (change it to change the settings)."""
    from sppnet_lite import config, pretrain

    tiny = dict(train.experiment_config(quick=True), train_images=6, test_images=5, epochs=1,
                batch_size=4, side=[48, 64])
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(train, "experiment_config", lambda quick=None: dict(tiny))
    monkeypatch.setattr(config, "get_device", lambda name="auto": torch.device("cpu"))

    def tiny_pretrained(quick=None, device=None, progress=True):
        trunk = small_trunk().eval()
        trunk.checkpoint_hash = "tiny"
        return trunk

    monkeypatch.setattr(pretrain, "ensure_pretrained", tiny_pretrained)
    return tiny


def count_training(monkeypatch):
    """Wrap ``train.train_classifier`` so that the returned list grows by one per training."""
    calls, real = [], train.train_classifier

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_classifier", counted)
    return calls


@pytest.mark.parametrize("method,levels", [("crop", None), ("crop", (4, 3, 2, 1)),
                                           ("spp-multi", None)])
def test_ensure_classifier_equals_a_direct_training_and_trains_once(tmp_path, monkeypatch,
                                                                    method, levels):
    tiny = use_tiny_experiment(monkeypatch, tmp_path)
    calls = count_training(monkeypatch)
    net, seconds = train.ensure_classifier(method, levels=levels, progress=False)
    assert not net.training and next(net.parameters()).device.type == "cpu" and seconds > 0
    files = list((tmp_path / "classifiers").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(
        method if levels is None else f"{method}-spp4-3-2-1-")

    images = train.experiment_images("train")
    sizes = tiny["multi_sizes"] if method == "spp-multi" else [tiny["size"]]
    direct = train.train_classifier(method, images.images, images.labels, 6, small_trunk(),
                                    tiny["epochs"], sizes, tiny["batch_size"], tiny["lr"],
                                    tiny["seed"], "cpu", False, levels)
    torch.testing.assert_close(net.state_dict(), direct.state_dict(), rtol=0, atol=0)

    again, cached_seconds = train.ensure_classifier(method, levels=levels, progress=False)
    assert len(calls) == 2 and cached_seconds == seconds  # the direct call, nothing else
    torch.testing.assert_close(again.state_dict(), net.state_dict(), rtol=0, atol=0)
    tiny["epochs"] = 2  # other settings: another file, never the stale one
    train.ensure_classifier(method, levels=levels, progress=False)
    assert len(calls) == 3 and len(list((tmp_path / "classifiers").glob("*.npz"))) == 2


@pytest.mark.parametrize("damage", [b"not an npz", None])
def test_ensure_classifier_retrains_a_damaged_file_and_says_so(tmp_path, monkeypatch, damage):
    from sppnet_lite.cache import save_weights

    use_tiny_experiment(monkeypatch, tmp_path)
    net, _ = train.ensure_classifier("spp", progress=False)
    path, = (tmp_path / "classifiers").glob("spp-*.npz")
    if damage is None:  # readable, but the weights of another network
        save_weights(path, ZFLite(widths=(8, 8, 8, 8, 8)).state_dict(), {"train_seconds": 1.0})
    else:
        path.write_bytes(damage)
    calls = count_training(monkeypatch)
    with pytest.warns(UserWarning, match="training spp again"):
        retrained, _ = train.ensure_classifier("spp", progress=False)
    assert calls == ["spp"]
    torch.testing.assert_close(retrained.state_dict(), net.state_dict(), rtol=0, atol=0)
    train.ensure_classifier("spp", progress=False)  # the new file loads
    assert calls == ["spp"]


def test_another_seed_trains_another_network_and_the_default_seed_is_the_cached_one(
        tmp_path, monkeypatch):
    tiny = use_tiny_experiment(monkeypatch, tmp_path)
    calls = count_training(monkeypatch)
    default, _ = train.ensure_classifier("crop", progress=False)
    same, _ = train.ensure_classifier("crop", progress=False, seed=tiny["seed"])
    other, _ = train.ensure_classifier("crop", progress=False, seed=tiny["seed"] + 1)
    assert len(calls) == 2 and len(list((tmp_path / "classifiers").glob("*.npz"))) == 2
    torch.testing.assert_close(same.state_dict(), default.state_dict(), rtol=0, atol=0)
    images = train.experiment_images("train")
    direct = train.train_classifier("crop", images.images, images.labels, 6, small_trunk(),
                                    tiny["epochs"], [tiny["size"]], tiny["batch_size"], tiny["lr"],
                                    tiny["seed"] + 1, "cpu", False)
    torch.testing.assert_close(other.state_dict(), direct.state_dict(), rtol=0, atol=0)
    results = train.compare_methods(methods=("crop",), progress=False, seed=tiny["seed"] + 1)
    assert len(calls) == 3 and results["config"]["seed"] == tiny["seed"] + 1  # the direct call only


def test_the_experiments_share_one_training_per_network(tmp_path, monkeypatch):
    tiny = use_tiny_experiment(monkeypatch, tmp_path)
    calls = count_training(monkeypatch)
    results = train.compare_methods(progress=False)
    assert calls == list(train.METHODS)
    pyramids = train.compare_pyramids(progress=False)
    assert calls == [*train.METHODS, "crop", "crop"]  # "no SPP" is the comparison's crop network
    assert list(pyramids) == list(train.PYRAMIDS)
    assert [p["levels"] for p in pyramids.values()] == [[3], [4, 3, 2, 1], [6, 3, 2, 1]]
    assert [p["bins"] for p in pyramids.values()] == [9, 30, 50]
    assert pyramids["no SPP"]["accuracy"] == results["methods"]["crop"]["accuracy"]
    assert pyramids["no SPP"]["train_seconds"] == results["methods"]["crop"]["train_seconds"]
    feeds = train.crop_vs_full(progress=False)
    assert feeds["full image"] == results["methods"]["spp"]["accuracy"]  # same net, same images
    assert 0 <= feeds["centre crop"] <= 1
    assert len(calls) == len(train.METHODS) + 2  # nothing trained twice
    assert len(results["test_labels"]) == tiny["test_images"]
    again = train.compare_methods(progress=False)["methods"]  # loaded, not trained
    assert json.dumps(again) == json.dumps(results["methods"])  # (NaN for empty bins: as text)
    assert len(calls) == len(train.METHODS) + 2
