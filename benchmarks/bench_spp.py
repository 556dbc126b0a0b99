"""Side-by-side timings of the SPP implementations, as ratios (a script, not a test).

    python benchmarks/bench_spp.py            # CPU, and CUDA when present
    python benchmarks/bench_spp.py --repeats 21 --threads 2

Every comparison runs the two candidates alternately, ``--repeats`` times, and reports
the median of the per-pair ratios (robust to other processes sharing the machine) and
the median time of each. Ratios < 1 mean the first candidate is faster.

1. ``spatial_pyramid_pool`` (torch) vs the NumPy reference ``spp`` (one map at a time),
   a batch of 16 ZF-style conv5 maps, 256 × 13 × 13, levels (6, 3, 2, 1).
2. ``spatial_pyramid_pool`` vs one ``adaptive_max_pool2d`` per level (should be ≈ 1).
3. ``roi_spp`` vs one ``torchvision.ops.roi_pool`` per level: R = 2000 windows, C = 256,
   a 38 × 50 map (a ~600 × 800 image at stride 16), levels (6, 3, 2, 1); with post-ReLU
   features (as conv5) and with signed features (exercises the empty-bin correction).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_pool

from sppnet_lite.spp import roi_spp, spatial_pyramid_pool
from sppnet_lite.spp_numpy import spp

LEVELS = (6, 3, 2, 1)


def paired(fast, slow, device, repeats):
    """Median of time(fast)/time(slow) over alternating runs, and each median time (s)."""
    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    fast(), slow()  # warm-up: allocator, kernels, caches
    pairs = [(timed(fast), timed(slow)) for _ in range(repeats)]
    return (statistics.median(f / s for f, s in pairs), statistics.median(f for f, _ in pairs),
            statistics.median(s for _, s in pairs))


def window_rois(count, height, width, stride, generator):
    """Selective-search-like windows inside a (height·stride) × (width·stride) image:
    log-uniform sides from 16 px to the full image, uniform positions."""
    size = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    sides = torch.exp(torch.rand(count, 2, generator=generator)
                      * torch.log(size / 16)) * 16
    xy1 = torch.rand(count, 2, generator=generator) * (size - sides)
    return torch.cat([torch.zeros(count, 1), xy1, xy1 + sides - 1], dim=1)


def run(device, repeats):
    gen = torch.Generator().manual_seed(0)
    rows = []
    maps = torch.randn(16, 256, 13, 13, generator=gen)
    maps_np = maps.numpy()
    maps = maps.to(device)
    rows.append(("spatial_pyramid_pool vs NumPy spp (16×256×13×13)",
                 *paired(lambda: spatial_pyramid_pool(maps, LEVELS),
                         lambda: np.stack([spp(m, LEVELS) for m in maps_np]), device, repeats)))
    rows.append(("spatial_pyramid_pool vs adaptive_max_pool2d per level",
                 *paired(lambda: spatial_pyramid_pool(maps, LEVELS),
                         lambda: torch.cat([F.adaptive_max_pool2d(maps, n).flatten(1)
                                            for n in LEVELS], 1), device, repeats)))
    signed = torch.randn(1, 256, 38, 50, generator=gen)
    rois = window_rois(2000, 38, 50, 16, gen).to(device)
    for name, features in (("post-ReLU", signed.relu().to(device)), ("signed", signed.to(device))):
        def per_level(features=features):
            return torch.cat([roi_pool(features, rois, (n, n), 1 / 16).flatten(1)
                              for n in LEVELS], 1)
        assert torch.equal(roi_spp(features, rois, 1 / 16, LEVELS), per_level())
        rows.append((f"roi_spp vs roi_pool per level (R=2000, 256×38×50, {name})",
                     *paired(lambda features=features: roi_spp(features, rois, 1 / 16, LEVELS),
                             per_level, device, repeats)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="where to run (default: the CPU, and CUDA when present)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(name) for name in ("cpu", "cuda")
               if args.device in ("all", name) and (name == "cpu" or torch.cuda.is_available())]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{args.repeats} alternating repeats, median of per-pair ratios")
    print(f"{'device':6}  {'comparison':62} {'ratio':>6} {'first':>9} {'second':>9}")
    for device in devices:
        name = device.type if device.type == "cpu" else torch.cuda.get_device_name()
        for label, ratio, fast, slow in run(device, args.repeats):
            print(f"{device.type:6}  {label:62} {ratio:6.3f} {fast * 1e3:7.2f}ms {slow * 1e3:7.2f}ms")
        print(f"        ({name})")


if __name__ == "__main__":
    main()
