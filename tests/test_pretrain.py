"""Pretraining ZFLite: checkpoints (.npz, no pickles), the cached ensure_pretrained and its
crops (sppnet_lite.pretrain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sppnet_lite import config, pretrain
from sppnet_lite.backbone import ZFLite
from sppnet_lite.cache import load_weights, save_weights
from sppnet_lite.data import CLASSES


def tiny_config() -> dict:
    return dict(pretrain.pretrain_config(quick=True), scenes=2, epochs=1, batch_size=16,
                model={"arch": "ZFLite", "widths": [8, 8, 8, 8, 8]}, size=32)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = ZFLite(widths=(8, 8, 8, 8, 16)).eval()
    path = tmp_path / "ck.npz"
    digest = pretrain.save_checkpoint(net, path, {"a": 1}, info={"seconds": 1.5})
    _, meta = load_weights(path)  # the book's one weights format
    assert meta["format"] == pretrain.CHECKPOINT_FORMAT == 2 and meta["config_hash"] == digest
    loaded = pretrain.load_checkpoint(path, expected_hash=digest)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert loaded.checkpoint_hash == digest and loaded.pretrain_info == {"seconds": 1.5}
    assert not loaded.training and loaded.out_channels == 16
    with pytest.raises(ValueError, match="config hash"):
        pretrain.load_checkpoint(path, expected_hash="0" * 16)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain.load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(path.read_bytes()[: 200])
    with pytest.raises(ValueError, match="not a sppnet-lite array file"):
        pretrain.load_checkpoint(tmp_path / "corrupt.npz")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "old.pt")  # a pickle: never unpickled
    with pytest.raises(ValueError, match="not a sppnet-lite array file"):
        pretrain.load_checkpoint(tmp_path / "old.pt")
    save_weights(tmp_path / "foreign.npz", {"weights": torch.zeros(3)}, {"format": 2})
    with pytest.raises(ValueError, match="not a sppnet-lite checkpoint"):
        pretrain.load_checkpoint(tmp_path / "foreign.npz")


def test_pretraining_crops():
    cfg = tiny_config()
    crops, labels = pretrain.pretraining_crops(cfg)
    assert crops.dtype == np.uint8 and crops.shape[1:] == (32, 32, 3)
    assert labels.dtype == np.int64 and len(labels) == len(crops) > 0
    assert set(labels.tolist()) <= set(range(len(CLASSES) + 1))
    assert (labels == len(CLASSES)).any()  # background crops carry the extra label
    again, _ = pretrain.pretraining_crops(cfg)
    np.testing.assert_array_equal(again, crops)  # seeded


def test_ensure_pretrained_trains_once_then_loads(tmp_path, monkeypatch):
    tiny = tiny_config()
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(pretrain, "pretrain_config", lambda quick=None: dict(tiny))
    first = pretrain.ensure_pretrained(device="cpu", progress=False)
    assert not first.training and first.checkpoint_hash
    assert (tmp_path / "checkpoints" / f"{first.checkpoint_hash}.npz").is_file()
    assert first.pretrain_info["crops"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached checkpoint must be reused")

    monkeypatch.setattr(pretrain, "pretrain", no_training)
    second = pretrain.ensure_pretrained(device="cpu", progress=False)
    assert second.checkpoint_hash == first.checkpoint_hash
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    tiny["epochs"] = 2  # other settings -> other hash -> never the stale file
    with pytest.raises(AssertionError, match="cached checkpoint"):
        pretrain.ensure_pretrained(device="cpu", progress=False)


def test_ensure_pretrained_retrains_over_a_damaged_cache_file(tmp_path, monkeypatch):
    tiny = tiny_config()
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(pretrain, "pretrain_config", lambda quick=None: dict(tiny))
    path = tmp_path / "checkpoints" / f"{pretrain.config_hash(tiny)}.npz"
    path.parent.mkdir()
    path.write_bytes(b"half a file")
    calls = []

    def fake_pretrain(cfg, device="cpu", progress=True):
        calls.append(cfg)
        return ZFLite(cfg["model"]["widths"]).eval(), {"crops": 0}

    monkeypatch.setattr(pretrain, "pretrain", fake_pretrain)
    model = pretrain.ensure_pretrained(device="cpu", progress=False)
    assert len(calls) == 1 and model.checkpoint_hash == pretrain.config_hash(tiny)
    assert pretrain.load_checkpoint(path).checkpoint_hash == model.checkpoint_hash
