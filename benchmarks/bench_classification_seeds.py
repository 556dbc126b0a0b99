"""Chapter 04's comparison over three training seeds: warp, crop, SPP single- and multi-size.

    python benchmarks/bench_classification_seeds.py [--seeds 0 1 2] [--quick]
        [--json build/results/bench_classification_seeds.json]

Chapter 04 trains each network once, with seed 0: its run is reproducible, but one run
cannot say how much of a one-point difference the seed decides. This script trains the
four networks again with other seeds — the same pretrained trunk, the same training and
test images, only the initialisation of the new layers, the batch order and dropout
change — and reports each method's test accuracy per seed, its mean and sample standard
deviation, and the same for the differences the chapter reads (SPP − warp, SPP − crop,
multi-size − single-size). Full mode (3 000 training images, 12 epochs) takes about five
minutes per seed on two CPU cores; every network is cached (seed 0 is the chapter's own),
and the table is written after each seed. Not part of ``make book``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sppnet_lite import config, train

DIFFERENCES = {"SPP − warp": ("spp", "warp"), "SPP − crop": ("spp", "crop"),
               "multi-size − single-size": ("spp-multi", "spp")}
"""The differences chapter 04 reads, as (minuend, subtrahend) method names."""


def spread(values: list) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max of ``values``."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the quick-mode budget")
    parser.add_argument("--json", type=Path,
                        default=config.RESULTS_DIR / "bench_classification_seeds.json")
    args = parser.parse_args()
    accuracy = {}
    out = {"quick": args.quick, "config": train.experiment_config(args.quick), "accuracy": accuracy}
    for seed in args.seeds:
        methods = train.compare_methods(args.quick, seed=seed)["methods"]
        accuracy[str(seed)] = {name: row["accuracy"] for name, row in methods.items()}
        print(f"seed {seed}: " + ", ".join(f"{name} {value:.1%}" for name, value in accuracy[str(seed)].items()),
              flush=True)
        rows = list(accuracy.values())
        out["summary"] = {name: spread([row[name] for row in rows]) for name in train.METHODS}
        out["differences"] = {label: spread([row[a] - row[b] for row in rows])
                              for label, (a, b) in DIFFERENCES.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'test accuracy':26s}" + "".join(f"{'seed ' + s:>9s}" for s in accuracy) + "     mean ± std")
    for name, row in out["summary"].items():
        print(f"{name:26s}" + "".join(f"{accuracy[s][name]:9.1%}" for s in accuracy)
              + f"  {row['mean']:.1%} ± {row['std']:.1%}")
    for label, row in out["differences"].items():
        print(f"{label:26s}" + " " * 9 * len(accuracy) + f"  {100 * row['mean']:+.1f} ± {100 * row['std']:.1f} points")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
