"""ZFLite, torchvision trunks, preprocessing, the backbone spec saved with a detector, and
the classifier on top (chapter 04)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sppnet_lite import backbone
from sppnet_lite.backbone import Classifier, ZFLite
from sppnet_lite.cache import file_hash
from sppnet_lite.spp import project_boxes


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
    """Random weights, one forward each (VGG-16 is slow to build)."""
    trunk = backbone.torchvision_trunk(name)
    assert not trunk.training and trunk.checkpoint_hash is None
    assert trunk.stride == 16 and trunk.out_channels == channels
    assert trunk.canonical_size == 224 and trunk.config() == {"arch": name}
    height, width = 160, 208
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, height, width))
    assert out.shape[1] == channels
    map_h, map_w = out.shape[-2:]
    assert abs(map_h - math.ceil(height / 16)) <= 1 and abs(map_w - math.ceil(width / 16)) <= 1
    # the whole image projects into the map (clamped to it) ...
    whole = torch.tensor([[0.0, 0.0, width, height]])
    upper = torch.tensor([map_w - 1, map_h - 1] * 2, dtype=torch.float32)
    for rule in ("paper", "round"):
        cells = project_boxes(whole, trunk.stride, rule, feature_size=(map_h, map_w))[0]
        assert (cells >= 0).all() and (cells <= upper).all()
        assert cells[2] >= cells[0] and cells[3] >= cells[1]
    # ... and the paper's rule, which assumes ZF-style "same" padding, misses it by one cell
    # at most: the clamp only trims what these trunks' unpadded layers lost at the border
    free = project_boxes(whole, trunk.stride, "paper")[0]
    clamped = project_boxes(whole, trunk.stride, "paper", feature_size=(map_h, map_w))[0]
    assert (free - clamped).abs().max() <= 1


def test_trunk_local_weights_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    trunk = backbone.torchvision_trunk("resnet18", weights_path=path)
    torch.testing.assert_close(trunk.layers[0].weight, reference.conv1.weight)
    assert trunk.checkpoint_hash == file_hash(path, length=64) and len(trunk.checkpoint_hash) == 64
    with pytest.raises(FileNotFoundError):
        backbone.torchvision_trunk("resnet18", weights_path=tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt"):
        backbone.torchvision_trunk("resnet18", weights_path=tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")  # another model's
    with pytest.raises(ValueError, match="do not fit torchvision's resnet18"):
        backbone.torchvision_trunk("resnet18", weights_path=tmp_path / "other.pth")
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


@pytest.mark.parametrize("name", ["zflite", "alexnet", "resnet18"])
def test_backbone_spec_round_trip(name):
    torch.manual_seed(0)
    trunk = ZFLite((8, 8, 16, 16, 24)) if name == "zflite" else backbone.torchvision_trunk(name)
    trunk.checkpoint_hash = "c0ffee"
    spec = backbone.backbone_spec(trunk)
    assert backbone.backbone_name(spec) == name and name in backbone.BACKBONES
    assert spec["checkpoint_hash"] == "c0ffee"
    assert spec["normalisation"] == {"mean": list(backbone.MEAN), "std": list(backbone.STD)}
    rebuilt = backbone.build_backbone(spec)
    assert type(rebuilt) is type(trunk) and not rebuilt.training
    assert rebuilt.checkpoint_hash == "c0ffee" and rebuilt.out_channels == trunk.out_channels
    mine, theirs = trunk.state_dict(), rebuilt.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    rebuilt.load_state_dict(mine)  # what SPPNetDetector.load does next


def test_backbone_spec_errors():
    assert backbone.BACKBONES == ("zflite", "alexnet", "vgg16", "resnet18")
    with pytest.raises(TypeError, match="Conv2d"):
        backbone.backbone_spec(nn.Conv2d(3, 3, 1))
    spec = backbone.backbone_spec(ZFLite())
    assert spec["widths"] == [32, 64, 96, 128, 128]
    with pytest.raises(ValueError, match="normalises inputs"):
        backbone.build_backbone({**spec, "normalisation": {"mean": [0, 0, 0], "std": [1, 1, 1]}})
    with pytest.raises(ValueError, match="architecture 'GoogLeNet'"):
        backbone.build_backbone({**spec, "arch": "GoogLeNet"})


def test_classifier_heads():
    trunk = ZFLite(widths=(8, 8, 8, 8, 16))
    fc = Classifier(trunk, 6, head="fc", fixed_size=96).eval()
    spp = Classifier(ZFLite(widths=(8, 8, 8, 8, 16)), 6, head="spp").eval()
    assert fc.fc[1].in_features == 16 * 9 and spp.fc[1].in_features == 16 * 14
    with torch.no_grad():
        assert fc(torch.zeros(2, 3, 96, 96)).shape == (2, 6)
        for size in [(96, 96), (96, 208), (40, 200)]:
            assert spp(torch.zeros(1, 3, *size)).shape == (1, 6)
        with pytest.raises(RuntimeError):
            fc(torch.zeros(1, 3, 96, 208))
        # On a 96x96 input the SPP's 3x3 level is exactly the fixed-size head's pooling.
        conv5 = spp.trunk(torch.randn(1, 3, 96, 96))
        torch.testing.assert_close(spp.pool(conv5)[:, :16 * 9], fc.pool(conv5))
    with pytest.raises(ValueError, match="head"):
        Classifier(trunk, 6, head="gap")
