"""ZFLite, torchvision trunks, preprocessing and checkpoints (chapter 04)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppnet_lite import backbone, config
from sppnet_lite.backbone import ZFLite


@pytest.mark.parametrize("height,width", [(96, 96), (100, 130), (33, 17), (16, 16), (240, 480)])
def test_zflite_shape_and_stride(height, width):
    net = ZFLite().eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, height, width))
    assert out.shape == (2, net.out_channels, math.ceil(height / 16), math.ceil(width / 16))
    assert net.stride == 16 and net.out_channels == 128
    assert net.canonical_size // net.stride == 6  # one cell per bin of the 6x6 level


def test_receptive_field_against_hand_computation_and_gradient():
    net = ZFLite().eval()
    # conv1 7/2: 7; pool 3/2: +2*2; conv2 5/2: +4*4; pool 3/2: +2*8; three 3x3: +3*2*16
    assert net.receptive_field == 7 + 4 + 16 + 16 + 96 == 139
    x = torch.randn(1, 3, 320, 320, requires_grad=True)
    out = net(x)
    out[0, :, 10, 10].sum().backward()
    cols = torch.nonzero(x.grad.abs().sum((0, 1, 2)) > 0)
    assert int(cols.max() - cols.min()) + 1 <= net.receptive_field
    # AlexNet's conv5 receptive field is the textbook 163 px.
    assert backbone.torchvision_trunk("alexnet").receptive_field == 163


@pytest.mark.parametrize("name,channels", [("alexnet", 256), ("vgg16", 512), ("resnet18", 256)])
def test_torchvision_trunks(name, channels):
    trunk = backbone.torchvision_trunk(name).eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, 128, 160))
    assert trunk.stride == 16 and trunk.out_channels == channels
    assert out.shape[1] == channels
    assert abs(out.shape[2] - 128 / 16) <= 1 and abs(out.shape[3] - 160 / 16) <= 1


def test_trunk_local_weights_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    trunk = backbone.torchvision_trunk("resnet18", weights_path=path)
    torch.testing.assert_close(trunk.layers[0].weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError):
        backbone.torchvision_trunk("resnet18", weights_path=tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt"):
        backbone.torchvision_trunk("resnet18", weights_path=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="expected one of"):
        backbone.torchvision_trunk("vgg19")


def test_preprocess():
    image = np.zeros((5, 7, 3), np.uint8)
    image[..., 0] = 255
    x = backbone.preprocess(image)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    expected = [(1 - backbone.MEAN[0]) / backbone.STD[0], -backbone.MEAN[1] / backbone.STD[1],
                -backbone.MEAN[2] / backbone.STD[2]]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected))
    assert backbone.preprocess([image, image]).shape == (2, 3, 5, 7)
    assert backbone.preprocess(np.stack([image] * 3)).shape == (3, 3, 5, 7)
    with pytest.raises(ValueError, match="one size"):
        backbone.preprocess([image, np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        backbone.preprocess(image.astype(np.float32))


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = ZFLite(widths=(8, 8, 8, 8, 16)).eval()
    path = tmp_path / "ck.pt"
    digest = backbone.save_checkpoint(net, path, {"a": 1}, info={"seconds": 1.5})
    loaded = backbone.load_checkpoint(path, expected_hash=digest)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert loaded.checkpoint_hash == digest and loaded.pretrain_info == {"seconds": 1.5}
    assert not loaded.training and loaded.out_channels == 16
    with pytest.raises(ValueError, match="config hash"):
        backbone.load_checkpoint(path, expected_hash="0" * 16)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        backbone.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[: 200])
    with pytest.raises(ValueError, match="corrupt"):
        backbone.load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a sppnet-lite checkpoint"):
        backbone.load_checkpoint(tmp_path / "foreign.pt")


def test_ensure_pretrained_trains_once_then_loads(tmp_path, monkeypatch):
    tiny = dict(backbone.pretrain_config(quick=True), scenes=2, epochs=1, batch_size=16,
                model={"arch": "ZFLite", "widths": [8, 8, 8, 8, 8]}, size=32)
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(backbone, "pretrain_config", lambda quick=None: dict(tiny))
    first = backbone.ensure_pretrained(device="cpu", progress=False)
    assert not first.training and first.checkpoint_hash
    assert (tmp_path / "checkpoints" / f"{first.checkpoint_hash}.pt").is_file()
    assert first.pretrain_info["crops"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached checkpoint must be reused")

    monkeypatch.setattr(backbone, "pretrain", no_training)
    second = backbone.ensure_pretrained(device="cpu", progress=False)
    assert second.checkpoint_hash == first.checkpoint_hash
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    tiny["epochs"] = 2  # other settings -> other hash -> never the stale file
    with pytest.raises(AssertionError, match="cached checkpoint"):
        backbone.ensure_pretrained(device="cpu", progress=False)
