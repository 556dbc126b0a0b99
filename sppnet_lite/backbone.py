"""The conv trunk SPP-net starts from: ZFLite, torchvision adapters, and a classifier on top.

``ZFLite`` follows ZF-5 (Zeiler & Fergus; the network of the SPP-net paper's
detection results) at CPU size: conv1 7×7/2, max-pool 3×3/2, conv2 5×5/2,
max-pool 3×3/2, conv3–conv5 3×3, every layer padded "same" (``pad = ⌊k/2⌋``), so
conv5 cell ``(i, j)`` is centred near input pixel ``(16·i, 16·j)`` and has
``ceil(H/16) × ceil(W/16)`` cells — the assumption behind the paper's box
projection rule. Its width (conv5: 128 channels) makes a {6, 3, 2, 1} pyramid
6 400-dimensional.

ZFLite is pretrained on SynthVOC crops by :mod:`sppnet_lite.pretrain` (the book's
stand-in for ImageNet); torchvision's AlexNet, VGG-16 and ResNet-18 trunks take
ImageNet weights from a local file you provide. Nothing here downloads anything.

Taught in chapter 04 (used from chapter 06 on).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import file_hash

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""Per-channel normalisation of :func:`preprocess` (ImageNet's, so torchvision weights fit)."""



def preprocess(images, device: torch.device | str | None = None) -> torch.Tensor:
    """RGB uint8 image(s) → normalised float32 ``(N, 3, H, W)`` tensor.

    Accepts one ``(H, W, 3)`` array, an ``(N, H, W, 3)`` array, or a list of
    same-size ``(H, W, 3)`` arrays. Values are scaled to [0, 1] then normalised by
    :data:`MEAN` and :data:`STD`. Taught in chapter 04.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: got an empty list; expected at least one (H, W, 3) image")
        shapes = {np.shape(im) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"images: a list must hold images of one size, got shapes {shapes}")
        images = np.stack(images)
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 (H, W, 3) or (N, H, W, 3), got dtype "
                         f"{array.dtype} and shape {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array)).to(device or "cpu")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ZFLite(nn.Module):
    """ZF-5-style trunk: ``(N, 3, H, W)`` normalised → conv5 ``(N, C, ⌈H/16⌉, ⌈W/16⌉)``.

    Attributes: ``stride`` (16 px per conv5 cell), ``receptive_field`` (px, of one
    conv5 cell), ``out_channels`` (C = ``widths[-1]``), ``canonical_size`` (the
    square input side used in pretraining, px: its conv5 map is 6×6, one cell per
    bin of the finest pyramid level). Batch norm after every conv speeds up
    training from scratch; in eval mode it is a fixed affine map.
    Taught in chapter 04.
    """

    stride = 16
    canonical_size = 96

    def __init__(self, widths: Sequence[int] = (32, 64, 96, 128, 128)):
        super().__init__()
        if len(widths) != 5 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths: expected 5 positive channel counts, got {widths!r}")
        self.widths = tuple(int(w) for w in widths)
        c1, c2, c3, c4, c5 = self.widths

        def conv(cin, cout, k, s):
            return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *conv(3, c1, 7, 2), nn.MaxPool2d(3, 2, 1),
            *conv(c1, c2, 5, 2), nn.MaxPool2d(3, 2, 1),
            *conv(c2, c3, 3, 1), *conv(c3, c4, 3, 1), *conv(c4, c5, 3, 1))
        self.out_channels = c5
        self.receptive_field = receptive_field(self.layers)
        self.checkpoint_hash: str | None = None
        self.pretrain_info: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def config(self) -> dict:
        """What determines the architecture (part of every checkpoint's hash)."""
        return {"arch": "ZFLite", "widths": list(self.widths)}


# ----------------------------------------------------------------------------------------
# Receptive field and torchvision adapters
# ----------------------------------------------------------------------------------------

def receptive_field(module: nn.Module) -> int:
    """Receptive field (px) of one output cell of a chain of convs and max-pools.

    Walks ``module.modules()`` in order (skipping ResNet ``downsample`` shortcuts,
    which run in parallel with a block's first conv): ``rf += (k - 1) · jump``,
    ``jump *= stride``. Taught in chapter 04.
    """
    rf, jump = 1, 1
    for name, m in module.named_modules():
        if "downsample" in name:
            continue
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            d = m.dilation if isinstance(m.dilation, int) else m.dilation[0]
            rf += (k - 1) * d * jump
            jump *= s
    return rf


class TorchvisionTrunk(nn.Module):
    """The conv trunk of a torchvision classifier, cut at stride 16.

    ``alexnet``: ``features`` without its last max-pool (conv5, 256 channels);
    ``vgg16``: ``features`` without its last max-pool (conv5_3, 512); ``resnet18``:
    stem to ``layer3`` (256). Attributes ``stride`` (16), ``out_channels``,
    ``receptive_field`` and ``canonical_size`` (224 px, the ImageNet input the
    weights were trained on; the detector's scales follow from it). Inputs are
    normalised with ImageNet's :data:`MEAN` / :data:`STD`, as ZFLite's. Taught in chapter 04.
    """

    stride = 16
    canonical_size = 224

    def __init__(self, layers: nn.Module, out_channels: int, name: str):
        super().__init__()
        self.layers = layers
        self.out_channels = out_channels
        self.name = name
        self.receptive_field = receptive_field(layers)
        self.checkpoint_hash: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def config(self) -> dict:
        """What determines the architecture (saved with a detector)."""
        return {"arch": self.name}


TRUNKS = ("alexnet", "vgg16", "resnet18")
BACKBONES = ("zflite", *TRUNKS)
"""What ``sppnet-lite train --backbone`` accepts: the book's ZFLite or a torchvision trunk."""


def torchvision_trunk(name: str, weights_path: str | os.PathLike | None = None
                      ) -> TorchvisionTrunk:
    """Conv trunk of torchvision's ``alexnet``, ``vgg16`` or ``resnet18``.

    ``weights_path=None`` gives random weights. ``weights_path`` is a local file
    holding the full model's ``state_dict`` as torchvision distributes it (e.g.
    ``resnet18-f37072fd.pth``), read with ``torch.load(weights_only=True)``; its
    SHA-256 becomes the trunk's ``checkpoint_hash``. Nothing is ever downloaded.
    Taught in chapter 04.
    """
    import torchvision.models as tvm

    if name not in TRUNKS:
        raise ValueError(f"name: expected one of {TRUNKS}, got {name!r}")
    model = {"alexnet": tvm.alexnet, "vgg16": tvm.vgg16, "resnet18": tvm.resnet18}[name](
        weights=None)
    if weights_path is not None:
        try:
            model.load_state_dict(_torch_load(weights_path))
        except RuntimeError as err:  # missing or unexpected keys, wrong shapes
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"weights {str(weights_path)!r} do not fit torchvision's {name} "
                             f"({first})") from None
    if name == "resnet18":
        layers = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                               model.layer1, model.layer2, model.layer3)
        trunk = TorchvisionTrunk(layers, 256, name)
    else:
        features = model.features[:-1]  # drop the last max-pool: stride 32 → 16
        trunk = TorchvisionTrunk(features, 512 if name == "vgg16" else 256, name)
    if weights_path is not None:
        trunk.checkpoint_hash = file_hash(weights_path, length=64)
    return trunk.eval()


def backbone_spec(trunk: nn.Module) -> dict:
    """What rebuilds ``trunk``'s architecture, and which weights it holds (saved with a
    detector): ``arch``, ZFLite's ``widths``, ``checkpoint_hash`` (ZFLite: the
    pretraining settings' hash; torchvision: the weights file's SHA-256) and the
    input normalisation. Taught in chapter 10."""
    if not isinstance(trunk, (ZFLite, TorchvisionTrunk)):
        raise TypeError(f"backbone: only ZFLite and torchvision trunks can be saved with a "
                         f"detector, got {type(trunk).__name__}")
    return {**trunk.config(), "checkpoint_hash": trunk.checkpoint_hash,
            "normalisation": {"mean": list(MEAN), "std": list(STD)}}


def backbone_name(spec: dict) -> str:
    """``"zflite"`` or the torchvision name of a :func:`backbone_spec`."""
    return "zflite" if spec.get("arch") == "ZFLite" else str(spec.get("arch"))


def build_backbone(spec: dict) -> nn.Module:
    """An untrained trunk with the architecture in ``spec`` (its weights are loaded after)."""
    if spec.get("normalisation", {"mean": list(MEAN), "std": list(STD)}) != {
            "mean": list(MEAN), "std": list(STD)}:
        raise ValueError(f"backbone spec normalises inputs with {spec['normalisation']}; this "
                         f"sppnet-lite uses mean {MEAN} and std {STD}")
    name = backbone_name(spec)
    if name == "zflite":
        model = ZFLite(spec["widths"])
    elif name in TRUNKS:
        model = torchvision_trunk(name)
    else:
        raise ValueError(f"backbone spec names architecture {spec.get('arch')!r}; expected "
                         f"'ZFLite' or one of {TRUNKS}")
    model.checkpoint_hash = spec.get("checkpoint_hash")
    return model.eval()


class Classifier(nn.Module):
    """Trunk + pooling + FC: ``(N, 3, H, W)`` → logits ``(N, num_classes)``.

    ``head="fc"`` max-pools conv5 with a 2×2/2 window and flattens: it needs the
    input size it was built for (``fixed_size``; 96 → conv5 6×6 → 3×3 bins).
    ``head="spp"`` pools a pyramid (``levels``) and accepts any size. The
    pretraining network and chapter 04's classifiers. Taught in chapter 04.
    """

    def __init__(self, trunk: nn.Module, num_classes: int, head: str = "spp",
                 levels: Sequence[int] = (3, 2, 1), fixed_size: int = 96, hidden: int = 256,
                 dropout: float = 0.3):
        super().__init__()
        from .spp import SpatialPyramidPooling

        self.trunk = trunk
        self.head_kind = head
        if head == "fc":
            cells = math.ceil(fixed_size / trunk.stride) // 2
            self.pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
            in_dim = trunk.out_channels * cells * cells
        elif head == "spp":
            self.pool = SpatialPyramidPooling(levels)
            in_dim = trunk.out_channels * sum(n * n for n in levels)
        else:
            raise ValueError(f"head: expected 'fc' or 'spp', got {head!r}")
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden),
                                nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.trunk(x)))


def _torch_load(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights: no file at {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f"weights: cannot read {str(path)!r} as a torch file "
                         f"({type(err).__name__}: {err}); the file is corrupt or not a state "
                         "dict") from err
