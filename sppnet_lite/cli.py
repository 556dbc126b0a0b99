"""The ``sppnet-lite`` command line: make data, train, detect, evaluate, build the book.

Every subcommand turns bad input (a missing folder, an unreadable image, an
empty image list, a run directory from another version) into one line on
stderr and a non-zero exit status, never a traceback; outputs are written
atomically, so a failed run never destroys an earlier result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BACKBONES = ("zflite", "alexnet", "vgg16", "resnet18")  # sppnet_lite.backbone.BACKBONES, kept
# here so that parsing the command line imports no torch
METHODS = ("sppnet", "fast-rcnn", "faster-rcnn")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (also via ``sys.exit``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("sppnet-lite: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, NotADirectoryError, ValueError, OSError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"sppnet-lite {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(status or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sppnet-lite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    data = sub.add_parser("data", help="generate the SynthVOC dataset")
    data_sub = data.add_subparsers(dest="data_command")
    make = data_sub.add_parser("make", help="write SynthVOC in VOC layout")
    make.add_argument("--out", type=Path, default=None, help="output folder (default: data/synthvoc-*)")
    make.add_argument("--seed", type=int, default=None)
    make.add_argument("--quick", action="store_true", help="the small quick-mode splits")
    make.set_defaults(func=cmd_data_make, command="data make")

    train = sub.add_parser("train", help="train the detector (resumable)")
    train.add_argument("--data", type=Path, required=True, help="a VOC-layout folder")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--method", choices=METHODS, default="sppnet",
                       help="sppnet: frozen trunk, FC fine-tuning, SVMs, box regressors (chapters "
                            "07-10); fast-rcnn: one network trained end to end, conv3 and up "
                            "included (chapter 11; recommended for your own photos); faster-rcnn: "
                            "fast-rcnn plus a region proposal network on its trunk, so detect "
                            "needs no selective search (chapter 12)")
    train.add_argument("--quick", action="store_true")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--scales", type=scale_list, default=None, metavar="S1,S2,...",
                       help="shorter image sides of the conv passes, px (default: the five of "
                            "sppnet_lite.detector.SCALES for zflite, the paper's five for a "
                            "torchvision trunk; fast-rcnn trains at the middle one of them and "
                            "detects at all five unless you give scales; one scale is faster)")
    train.add_argument("--iterations", type=int, default=None, metavar="N",
                       help="training mini-batches (sppnet: FC fine-tuning, default 3000, 500 "
                            "with --quick; fast-rcnn: default 1600, 100 with --quick)")
    train.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                       help="fast-rcnn: save a resumable checkpoint at least this often "
                            "(default 60)")
    _add_backbone_arguments(train, default="zflite")
    train.add_argument("--classes", type=name_list, default=None, metavar="A,B,...",
                       help="class names in label order (default: the folder's classes.txt, "
                            "else the names found in the training annotations)")
    train.set_defaults(func=cmd_train)

    detect = sub.add_parser("detect", help="detect objects in images")
    detect.add_argument("--run", type=Path, required=True)
    detect.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    detect.add_argument("--out", type=Path, required=True, help="detections JSON file")
    detect.add_argument("--draw", type=Path, default=None, help="folder for annotated images")
    detect.add_argument("--score-threshold", type=float, default=None,
                        help="keep detections scoring at least this (default: 0 for SVM scores)")
    detect.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    _add_backbone_arguments(detect, default=None)
    detect.set_defaults(func=cmd_detect)

    evaluate = sub.add_parser("evaluate", help="VOC AP / mAP of a trained detector")
    evaluate.add_argument("--run", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-images", type=int, default=None)
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    _add_backbone_arguments(evaluate, default=None)
    evaluate.set_defaults(func=cmd_evaluate)

    book = sub.add_parser("book", help="execute every chapter into build/")
    book.add_argument("--quick", action="store_true")
    book.set_defaults(func=cmd_book)
    return parser


def _add_backbone_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    checked = "" if default else " (checked against the run: a mismatch is refused)"
    parser.add_argument("--backbone", choices=BACKBONES, default=default,
                        help="the conv trunk: the book's ZFLite or a torchvision trunk" + checked)
    parser.add_argument("--weights", type=Path, default=None, metavar="FILE",
                        help="torchvision ImageNet weights (a local state-dict file; needed for "
                             "alexnet, vgg16, resnet18; never downloaded)" + checked)


def name_list(text: str) -> tuple[str, ...]:
    """``"cat,dog"`` -> ``("cat", "dog")``; argparse turns the ValueError into a usage error."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(text)
    return names


def scale_list(text: str) -> tuple[int, ...]:
    """``"296,448"`` -> ``(296, 448)``; argparse turns the ValueError into a usage error."""
    scales = tuple(int(part) for part in text.split(","))
    if not scales or min(scales) < 16:
        raise ValueError(text)
    return scales


def cmd_data_make(args) -> int:
    from .data import ensure_dataset, make_dataset

    if args.out is None and args.seed is None:
        out = ensure_dataset(quick=args.quick)
    else:
        from . import config

        out = args.out or config.DATA_DIR / f"synthvoc-{'quick' if args.quick else 'full'}"
        out = make_dataset(out, seed=args.seed, quick=args.quick)
    print(f"dataset written to {out}")
    return 0


def cmd_train(args) -> int:
    _need_dir(args.data, "--data")
    weights = _need_weights(args)
    from . import config
    from .voc import check_images

    changes = {"backbone": args.backbone, "weights": weights, "classes": args.classes}
    if args.scales:
        changes["scales"] = args.scales
    if args.iterations is not None:
        if args.iterations < 1:
            raise CLIError(f"--iterations must be at least 1, got {args.iterations}")
        changes["iterations"] = args.iterations
    device = config.get_device(args.device)
    if args.method in ("fast-rcnn", "faster-rcnn"):
        if args.scales:  # train and detect at the scales given
            changes["test_scales"] = args.scales
        from .fast_rcnn_training import FastRCNNConfig, FastRCNNPipeline

        settings = FastRCNNConfig.default(args.quick, checkpoint_seconds=args.checkpoint_seconds,
                                          **changes)
        pipeline = FastRCNNPipeline(args.data, args.out, args.quick, device, settings)
        inputs = pipeline.inputs
        if args.method == "faster-rcnn":
            from .faster_rcnn_training import FasterRCNNConfig, FasterRCNNPipeline

            pipeline = FasterRCNNPipeline(pipeline, args.out, FasterRCNNConfig.default(
                args.quick, checkpoint_seconds=args.checkpoint_seconds))
    else:
        from .pipeline import Pipeline, PipelineConfig

        settings = PipelineConfig.default(args.quick, **changes)
        pipeline = inputs = Pipeline(args.data, args.out, args.quick, device, settings)
    for split in (settings.train_split, settings.val_split):  # a bad image fails here, not later
        check_images(inputs.dataset(split))
    detector = pipeline.run()
    print(f"trained detector for {len(detector.class_names)} classes "
          f"({', '.join(detector.class_names)}) saved to {args.out}")
    return 0


def cmd_detect(args) -> int:
    from .voc import read_image

    paths = collect_images(args.images)
    images = [read_image(p) for p in paths]  # fail on a bad image before any work
    _need_run(args.run)
    weights = _need_weights(args)
    import numpy as np
    from tqdm.auto import tqdm

    from . import config
    from .cache import save_json_atomic

    detector = _load_detector(args, weights, config.get_device(args.device))
    threshold = args.score_threshold
    if threshold is None:
        threshold = 0.0 if detector.config.score == "svm" else 0.5
    rows = []
    for path, image in tqdm(list(zip(paths, images)), desc="detect", disable=len(paths) < 2):
        dets = detector.detect(image, score_threshold=threshold)
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
            rows.append({"image": path.name, "label": detector.class_names[int(label)],
                         "score": float(score), "box": [float(v) for v in np.round(box, 2)]})
        if args.draw is not None:
            draw_detections(image, dets, detector.class_names, Path(args.draw) / f"{path.stem}.png")
    save_json_atomic(args.out, rows)
    print(f"{len(rows)} detections in {len(paths)} images written to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    _need_dir(args.data, "--data")
    _need_run(args.run)
    weights = _need_weights(args)
    from . import config
    from .cache import save_json_atomic
    from .evaluate import evaluate_detector
    from .voc import VOCDataset

    detector = _load_detector(args, weights, config.get_device(args.device))
    dataset = VOCDataset(args.data, args.split, classes=detector.class_names)
    if len(dataset) == 0:
        raise CLIError(f"--split {args.split!r} of {str(args.data)!r} lists no images")
    report = evaluate_detector(detector, dataset, max_images=args.max_images)
    result = report["results"]["detector"]
    for row in result.table():
        print(f"{row['class']:>14s}  AP07 {row['AP (VOC07 11-pt)']:.3f}  AP {row['AP (all-point)']:.3f}")
    out = Path(args.run) / f"evaluation_{args.split}.json"
    save_json_atomic(out, {"split": args.split, "images": report["images"], **result.to_json(),
                           "seconds_per_image": report["seconds_per_image"]})
    print(f"mAP (VOC07 11-point) {result.mAP:.4f}; written to {out}")
    return 0


def cmd_book(args) -> int:
    from .book import run_book

    return int(run_book(quick=True if args.quick else None))


def collect_images(items) -> list[Path]:
    """Expand files and folders into a sorted list of image files; error if none."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise CLIError(f"IMAGE_OR_DIR {str(item)!r} does not exist")
    if not paths:
        raise CLIError(f"no images found in {[str(i) for i in items]}; expected image files "
                       f"({', '.join(IMAGE_SUFFIXES)}) or folders holding them")
    return paths


def draw_detections(image, dets, class_names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .cache import atomic_path
    from .viz import draw_boxes, show_image

    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1]))
    show_image(ax, image)
    draw_boxes(ax, dets.boxes, dets.labels, dets.scores, class_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _need_dir(path: Path, name: str) -> None:
    if not Path(path).is_dir():
        raise CLIError(f"{name} {str(path)!r} is not a folder")


def _need_run(run: Path) -> None:
    if not (Path(run) / "config.json").is_file():
        raise CLIError(f"--run {str(run)!r} has no config.json; expected the output of "
                       "`sppnet-lite train`")


def _need_weights(args) -> str | None:
    """``--weights`` as a string path, checked to exist; ``None`` when not given."""
    if args.weights is None:
        if args.backbone not in (None, "zflite"):
            raise CLIError(f"--backbone {args.backbone} needs --weights FILE (torchvision's "
                           "ImageNet state dict, a local file; see the README)")
        return None
    if not Path(args.weights).is_file():
        raise CLIError(f"--weights {str(args.weights)!r} is not a file")
    if args.backbone in (None, "zflite"):
        raise CLIError("--weights is for a torchvision trunk: add --backbone alexnet, vgg16 "
                       "or resnet18")
    return str(args.weights)


def _load_detector(args, weights: str | None, device):
    """The run's detector, SPP-net, Fast R-CNN or Faster R-CNN as it was trained; ``--backbone`` /
    ``--weights``, when given, must match it."""
    from .cache import file_hash
    from .detector import SPPNetDetector, read_run_config
    from .fast_rcnn import FastRCNNDetector
    from .faster_rcnn import FasterRCNNDetector

    method = read_run_config(args.run).get("method", SPPNetDetector.METHOD)
    cls = {c.METHOD: c for c in (SPPNetDetector, FastRCNNDetector, FasterRCNNDetector)}.get(method)
    if cls is None:
        raise CLIError(f"--run {str(args.run)!r} holds a detector of unknown method {method!r}")
    return cls.load(args.run, device=device, backbone=args.backbone,
                    weights_hash=file_hash(weights, length=64) if weights else None)


if __name__ == "__main__":
    sys.exit(main())
