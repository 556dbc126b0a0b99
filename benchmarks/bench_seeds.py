"""The book's headline mAPs over three dataset seeds: mean and spread (prints a table).

    python benchmarks/bench_seeds.py [--seeds 0 1 2] [--quick] [--no-scale-check]
        [--json build/results/bench_seeds.json]

Chapters 10 and 11 report one number per detector, measured on one draw of SynthVOC
(the recipe's seed, 0). How much of a difference between two detectors is the detector,
and how much is the draw? For each seed this script draws SynthVOC again
(``data/synthvoc-seed<N>-full``; seed 0 is the book's own set and reuses the book's
caches), trains the five detectors the chapters compare with the book's default
settings (the same pretrained trunk; nothing is tuned per seed), tests each on that
seed's test split and reports VOC07 11-point mAP per seed, the mean and the sample
standard deviation. Then, on the book's seed and on its **validation** split only, it
checks the choice of :data:`~sppnet_lite.detector.SCALES` against the paper's five
scales scaled to our 96-px trunk (``features.default_scales(96, True)``).

Full mode is what the README reports; a new seed costs about half an hour on two CPU
cores (selective search on 900 images, the three SPP-net/R-CNN pipelines, Fast R-CNN,
five evaluations). Every stage is cached, and the table is written after each seed,
so an interrupted run resumes where it stopped. Not part of ``make book``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sppnet_lite import config
from sppnet_lite.data import ensure_dataset, load_recipe
from sppnet_lite.detector import SCALES, SINGLE_SCALE
from sppnet_lite.evaluate import evaluate_detector
from sppnet_lite.fast_rcnn_training import default_fast_rcnn
from sppnet_lite.features import default_scales
from sppnet_lite.pipeline import default_pipeline

SPP_PIPELINES = {"SPP-net, 1 scale": {"scales": SINGLE_SCALE},
                 "SPP-net, 5 scales": {},
                 "R-CNN": {"extractor": "rcnn"}}
"""The chapter-10 detectors, as changes to the book's :class:`~sppnet_lite.pipeline.PipelineConfig`."""


def seed_data(seed: int, quick: bool) -> Path | None:
    """SynthVOC drawn with ``seed``; ``None`` for the book's own seed (its default folder)."""
    recipe = load_recipe()
    if seed == recipe["seed"]:
        return None
    return ensure_dataset(quick, recipe={**recipe, "name": f"synthvoc-seed{seed}", "seed": seed})


def test_maps(seed: int, quick: bool) -> dict:
    """``{detector: {"mAP", "mAP_all_point"}}`` on ``seed``'s test split, every detector trained first."""
    data_dir = seed_data(seed, quick)
    detectors = {name: default_pipeline(quick, data_dir=data_dir, **change).detector()
                 for name, change in SPP_PIPELINES.items()}
    fast = default_fast_rcnn(quick, data_dir=data_dir)
    detectors["Fast R-CNN, 1 scale"] = fast.detector().at_scales(SINGLE_SCALE)
    detectors["Fast R-CNN, 5 scales"] = fast.detector()
    test, proposals = fast.dataset("test"), fast.proposals("test")
    rows = {}
    for name, detector in detectors.items():
        result = evaluate_detector(detector, test, proposals)["results"]["detector"]
        rows[name] = {"mAP": result.mAP, "mAP_all_point": result.mAP_all_point}
        print(f"seed {seed}: {name:22s} mAP {result.mAP:.3f}", flush=True)
    return rows


def validation_scale_check(quick: bool) -> dict:
    """mAP on the book's validation split of the five-scale SPP-net detector with
    :data:`SCALES` and with the proportional scales."""
    rows = {}
    for label, scales in ((f"SCALES {SCALES}", SCALES),
                          (f"proportional {default_scales(96, True)}", default_scales(96, True))):
        pipe = default_pipeline(quick, scales=scales)
        val = pipe.dataset("val")
        result = evaluate_detector(pipe.detector(), val, pipe.proposals("val"))["results"]["detector"]
        rows[label] = {"mAP": result.mAP, "mAP_all_point": result.mAP_all_point, "images": len(val)}
        print(f"validation split: {label:40s} mAP {result.mAP:.3f}", flush=True)
    return rows


def summary(per_seed: dict) -> dict:
    """``{detector: {"mean", "std", "min", "max"}}`` over the seeds measured so far."""
    names = next(iter(per_seed.values())).keys()
    table = {}
    for name in names:
        values = [rows[name]["mAP"] for rows in per_seed.values()]
        table[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                       "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the quick-mode splits (a smoke test)")
    parser.add_argument("--no-scale-check", action="store_true",
                        help="skip the validation-split comparison of the scale sets")
    parser.add_argument("--json", type=Path, default=config.RESULTS_DIR / "bench_seeds.json")
    args = parser.parse_args()
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    per_seed = previous.get("per_seed", {}) if previous.get("quick") == args.quick else {}
    out = {"quick": args.quick, "per_seed": per_seed}
    for seed in args.seeds:
        per_seed[str(seed)] = test_maps(seed, args.quick)
        out["summary"] = summary(per_seed)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    if not args.no_scale_check:
        out["validation_scale_check"] = validation_scale_check(args.quick)
        args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'VOC07 mAP':22s}" + "".join(f"{'seed ' + s:>9s}" for s in per_seed) + "     mean ± std")
    for name, row in out["summary"].items():
        print(f"{name:22s}" + "".join(f"{per_seed[s][name]['mAP']:9.3f}" for s in per_seed)
              + f"  {row['mean']:.3f} ± {row['std']:.3f}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
