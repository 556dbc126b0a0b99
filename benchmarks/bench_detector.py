"""Benchmark whole-detector inference per image, excluding selective search (prints a table).

    python benchmarks/bench_detector.py [--quick] [--images 5] [--windows 2000] [--threads N]
        [--repeats 2] [--device auto|cpu|cuda] [--json build/results/bench_detector.json]

The three trained detectors of chapter 10 — R-CNN (crop and warp every window),
SPP-net with one scale and with five — run side by side on the same test images,
each image with exactly ``--windows`` windows (its selective-search boxes plus
jittered copies of them, as in ``bench_features.py``: the cost depends on the
number of windows, not on where they are). Per stage: conv (R-CNN: warp + conv),
pool, fc, svm, regression, nms; the total and the speed-up over R-CNN, and its ceiling:
R-CNN's time over that of the stages both methods run on every window. Detectors
not trained yet are trained first (cached in ``build/cache/runs``, as chapter 10
does). The fastest of ``--repeats`` runs per image is kept: other load only adds time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_features import windows

from sppnet_lite.detector import SCALES, SHARED_STAGES, SINGLE_SCALE, TIMED_STAGES
from sppnet_lite.pipeline import default_pipeline
from sppnet_lite.proposals import selective_search

DETECTORS = {"R-CNN": {"extractor": "rcnn"},
             "SPP-net, 1 scale": {"extractor": "spp", "scales": SINGLE_SCALE},
             "SPP-net, 5 scales": {"extractor": "spp", "scales": SCALES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="the quick-mode detectors and data")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    pipes = {name: default_pipeline(quick=args.quick, **settings) for name, settings in DETECTORS.items()}
    detectors = {name: pipe.detector(save=False) for name, pipe in pipes.items()}
    test = pipes["R-CNN"].dataset("test")  # every pipeline reads the same data
    device = detectors["R-CNN"].device if args.device == "auto" else torch.device(args.device)
    ids = list(range(min(args.images, len(test))))
    boxes = {i: windows(selective_search(test[i].image), args.windows, test.image_size(i), rng)
             for i in ids}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}; "
          f"{len(ids)} test images, {args.windows} windows each, selective search excluded")
    table = {}
    for name, detector in detectors.items():
        detector.backbone.to(device)
        detector.device = device
        detector.detect(test[ids[0]].image, proposals=boxes[ids[0]][:200])  # warm-up
        per_image = []
        for i in ids:
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                detector.detect(test[i].image, proposals=boxes[i])
                wall = time.perf_counter() - start - detector.last_timing["proposals"]
                runs.append({**{k: detector.last_timing.get(k, 0.0) for k in TIMED_STAGES},
                             "total": wall})
            per_image.append(min(runs, key=lambda t: t["total"]))
        table[name] = {k: float(np.mean([t[k] for t in per_image])) for k in per_image[0]}
    base = table["R-CNN"]["total"]
    print(f"{'seconds / image':18s}" + "".join(f"{s:>11s}" for s in (*TIMED_STAGES, "total"))
          + "  speed-up")
    for name, row in table.items():
        row["speedup"] = base / row["total"]
        print(f"{name:18s}" + "".join(f"{row[s]:11.4f}" for s in (*TIMED_STAGES, "total"))
              + f"  {row['speedup']:7.1f}x")
    shared = sum(table["R-CNN"][s] for s in SHARED_STAGES)
    ceiling = base / shared
    print(f"ceiling: the stages SPP-net shares with R-CNN ({', '.join(SHARED_STAGES)}) take {shared:.4f} s "
          f"of R-CNN's {base:.4f} s, so SPP-net can be at most {ceiling:.1f}x faster")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"windows": args.windows, "images": len(ids),
                                         "device": str(device), "threads": torch.get_num_threads(),
                                         "quick": args.quick, "speedup_ceiling": ceiling,
                                         "detectors": table}, indent=1))


if __name__ == "__main__":
    main()
