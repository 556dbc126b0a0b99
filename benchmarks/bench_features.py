"""Benchmark proposals and window features (not a timed test; prints a table).

    python benchmarks/bench_features.py [--quick] [--images 3] [--windows 2000] [--threads N]
        [--windows-from ss|gt] [--weights pretrained|random] [--devices cpu,cuda]

Per image of the SynthVOC test split: selective search (fast / quality), and the
features of ``--windows`` windows with R-CNN (crop + warp + conv per window),
SPP-net at one scale and at five scales — conv time, total time, and speed-ups
over R-CNN, on the CPU and on CUDA when present. Chapter 06 prints the same table.
``--windows-from gt`` (jittered ground-truth boxes) and ``--weights random`` time the
features where OpenCV's contrib module or the pretraining time is not available;
the timings do not depend on either.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from sppnet_lite.backbone import ZFLite
from sppnet_lite.data import ensure_dataset
from sppnet_lite.features import SPPFeatureExtractor, default_scales
from sppnet_lite.pretrain import ensure_pretrained
from sppnet_lite.rcnn import RCNNFeatureExtractor
from sppnet_lite.voc import VOCDataset


def windows(boxes: np.ndarray, count: int, image_size, rng) -> np.ndarray:
    """``boxes`` plus jittered copies of them, ``count`` in all."""
    height, width = image_size
    extra = boxes[rng.integers(0, len(boxes), max(0, count - len(boxes)))]
    sides = np.tile(extra[:, 2:] - extra[:, :2], 2)
    extra = np.clip(extra + rng.normal(0, 0.1, extra.shape) * sides, 0, [width, height] * 2)
    extra[:, 2:] = np.maximum(extra[:, 2:], extra[:, :2] + 1)
    return np.concatenate([boxes, extra])[:count].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="use the quick-mode data and backbone")
    parser.add_argument("--windows-from", choices=("ss", "gt"), default="ss")
    parser.add_argument("--weights", choices=("pretrained", "random"), default="pretrained")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda only if present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rng = np.random.default_rng(0)
    test = VOCDataset(ensure_dataset(quick=args.quick), "test")
    ids = list(range(min(args.images, len(test))))

    if args.windows_from == "ss":
        from sppnet_lite.proposals import selective_search

        print(f"selective search, {len(ids)} test images")
        proposals = {}
        for mode in ("fast", "quality"):
            seconds, counts = [], []
            for i in ids:
                start = time.perf_counter()
                boxes = selective_search(test[i].image, mode=mode)
                seconds.append(time.perf_counter() - start)
                counts.append(len(boxes))
                if mode == "fast":
                    proposals[i] = boxes
            print(f"  {mode:8s} {np.mean(seconds):6.2f} s/image, {np.mean(counts):6.0f} boxes/image")
    else:
        proposals = {i: test.annotation(i).boxes for i in ids}

    if args.weights == "random":
        backbone = ZFLite().eval()
    else:
        backbone = ensure_pretrained(quick=args.quick, progress=False)
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    boxes_by_image = {i: windows(proposals[i], args.windows, test.image_size(i), rng) for i in ids}
    print(f"\nfeatures of {args.windows} windows per image (mean over {len(ids)} images)")
    print(f"{'device':6s} {'method':18s} {'conv s':>8s} {'total s':>8s} {'conv x':>7s} {'total x':>7s}")
    for device in devices:
        trunk = copy.deepcopy(backbone).to(device).eval()
        methods = {
            "R-CNN": RCNNFeatureExtractor(trunk),
            "SPP-net, 1 scale": SPPFeatureExtractor(trunk),
            "SPP-net, 5 scales": SPPFeatureExtractor(
                trunk, scales=default_scales(trunk.canonical_size, multi_scale=True)),
        }
        results = {}
        for name, extractor in methods.items():
            extractor(test[ids[0]].image, boxes_by_image[ids[0]][:200])  # warm-up
            conv, total = [], []
            for i in ids:
                runs = []
                for _ in range(args.repeats):  # keep the fastest: other load only adds time
                    extractor(test[i].image, boxes_by_image[i])
                    runs.append(extractor.last_timing)
                best = min(runs, key=lambda t: t["total"])
                conv.append(best["conv"])
                total.append(best["total"])
            results[name] = (float(np.mean(conv)), float(np.mean(total)))
        base_conv, base_total = results["R-CNN"]
        for name, (conv, total) in results.items():
            print(f"{device:6s} {name:18s} {conv:8.4f} {total:8.4f} {base_conv / conv:7.1f} "
                  f"{base_total / total:7.1f}")


if __name__ == "__main__":
    main()
