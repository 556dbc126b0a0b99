"""Benchmark SPP-net vs R-CNN with the paper's ZF-5 at the paper's scale (prints a table).

    python benchmarks/bench_paper_scale.py [--windows 2000] [--rcnn-sample 128] [--repeats 2]
        [--device all|cpu|cuda] [--threads N] [--json build/results/bench_paper_scale.json]

ZF-5 (random weights: the time does not depend on them) on 2 000 windows of one
375 × 500 image: R-CNN warps each window to 224 × 224 and runs the trunk on it (timed on
``--rcnn-sample`` crops, scaled linearly to ``--windows``); SPP-net runs the trunk once
at 688 px (1 scale) or at 480, 576, 688, 864 and 1 200 px (5 scales) and pools every
window with ``roi_spp``; both run fc6 and fc7 on every window. Conv-only and overall
speed-ups are printed beside the paper's GPU figures (270× / 49× and 102× / 38×), with
the ceiling R-CNN's time / the fc time. ``--device all`` times the CPU and, when CUDA is
present, the GPU too. Each step runs once to warm up, then ``--repeats`` times; the fastest
run counts. See ``sppnet_lite.paper_scale`` and chapter 10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sppnet_lite.paper_scale import format_table, time_paper_scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--rcnn-sample", type=int, default=128,
                        help="crops R-CNN is timed on, scaled to --windows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, and CUDA when present")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is present")
    devices = {"all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = {}
    for device in devices:
        results[device] = time_paper_scale(args.windows, args.rcnn_sample, device=device,
                                           repeats=args.repeats)
        print(format_table(results[device]), end="\n\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
