"""What a real trunk costs: seconds per image for SPP-net's stages on each backbone.

For ZFLite and the torchvision trunks (``alexnet``, ``vgg16``, ``resnet18``, cut at
stride 16) this times, on a few SynthVOC test images with their selective-search
proposals, the conv pass(es), SPP pooling of every proposal and the FC head, at one
scale and at the five scales a detector trained with ``sppnet-lite train --backbone
NAME`` uses by default. Weights are random (the time does not depend on them once
denormal floats are flushed to zero, as here), and nothing is downloaded.

    python benchmarks/bench_trunks.py [--images 3] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sppnet_lite.backbone import BACKBONES, ZFLite, torchvision_trunk
from sppnet_lite.data import ensure_dataset
from sppnet_lite.detector import SCALES, SINGLE_SCALE, DetectorConfig, SPPNetDetector
from sppnet_lite.features import default_scales
from sppnet_lite.finetune import FCHead
from sppnet_lite.proposals import ensure_proposals
from sppnet_lite.voc import Subset, VOCDataset


def trunk_scales(name: str) -> dict[str, tuple[int, ...]]:
    """The one-scale and five-scale settings the pipeline gives each backbone."""
    if name == "zflite":
        return {"1 scale": SINGLE_SCALE, "5 scales": SCALES}
    return {"1 scale": default_scales(224), "5 scales": default_scales(224, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    # Random weights can drive activations into denormal floats, which real weights do not
    # and which x86 CPUs compute many times slower: flush them, so the timing is representative.
    torch.set_flush_denormal(True)
    test = VOCDataset(ensure_dataset(quick=True), "test")
    images = Subset(test, range(args.images))
    proposals = ensure_proposals(images, progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {len(images)} "
          f"images, {np.mean([len(p) for p in proposals]):.0f} proposals each")
    table = {}
    for name in BACKBONES:
        torch.manual_seed(0)
        trunk = ZFLite() if name == "zflite" else torchvision_trunk(name)
        head = FCHead(trunk.out_channels * 50, 6, 512).eval()
        for setting, scales in trunk_scales(name).items():
            detector = SPPNetDetector(trunk, head, [str(k) for k in range(6)], None, None,
                                      DetectorConfig(scales=scales, score="softmax",
                                                     regression=False), device)
            detector.detect(images[0].image, proposals[0][:50])  # warm-up
            runs = []
            for i in range(len(images)):
                tic = time.perf_counter()
                detector.detect(images[i].image, proposals[i])
                runs.append({"total": time.perf_counter() - tic,
                             **{k: detector.last_timing[k] for k in ("conv", "pool", "fc")}})
            row = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            table[f"{name}, {setting}"] = {"scales": list(scales), **row}
            print(f"{name:9s} {setting:8s} scales {scales!s:32s} conv {row['conv']:7.3f}  "
                  f"pool {row['pool']:6.3f}  fc {row['fc']:6.3f}  total {row['total']:7.3f} s/image")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "images": len(images),
                                         "trunks": table}, indent=1))


if __name__ == "__main__":
    main()
