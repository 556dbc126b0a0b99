"""The ``sppnet-lite`` command line: error paths (one line, non-zero exit) and a quick
end-to-end train -> detect -> evaluate run on a tiny generated dataset."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sppnet_lite import cli
from sppnet_lite.detector import Pipeline, PipelineConfig
from sppnet_lite.features import SPPFeatureExtractor


def run_cli(*args):
    return cli.main([str(a) for a in args])


def test_help_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "sppnet_lite.cli", "--help"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and "detect" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "sppnet_lite.cli", "detect", "--run", "/nonexistent",
                          "/nonexistent.jpg", "--out", "x.json"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["train", "--data", "/no/such/folder", "--out", "{tmp}/run"], "not a folder"),
    (["evaluate", "--run", "{tmp}", "--data", "/no/such/folder"], "not a folder"),
    (["detect", "--run", "{tmp}", "/no/such.jpg", "--out", "{tmp}/d.json"], "does not exist"),
    (["detect", "--run", "{tmp}", "{tmp}/empty", "--out", "{tmp}/d.json"], "no images"),
    (["detect", "--run", "{tmp}", "{tmp}/corrupt.jpg", "--out", "{tmp}/d.json"], "cannot read"),
    (["detect", "--run", "{tmp}", "{tmp}/ok.png", "--out", "{tmp}/d.json"], "config.json"),
    (["train", "--data", "{tmp}/empty", "--out", "{tmp}/run", "--quick"], "VOC-layout"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, args, needle):
    import cv2

    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((32, 32, 3), np.uint8))
    status = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert status != 0
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("scales", ["big", "296,", "8"])
def test_bad_scales_are_a_usage_error(tmp_path, capsys, scales):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--scales", scales)
    assert exit_info.value.code == 2 and "--scales" in capsys.readouterr().err
    assert cli.scale_list("296, 448") == (296, 448)


def test_run_dir_from_another_version_is_refused(tmp_path, capsys):
    import cv2

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"format": 999, "sppnet_lite": "9.9"}))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    status = run_cli("detect", "--run", tmp_path / "run", tmp_path / "a.png", "--out", tmp_path / "d.json")
    err = capsys.readouterr().err
    assert status != 0 and "format 999" in err and "retrain" in err
    assert not (tmp_path / "d.json").exists()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from sppnet_lite.data import load_recipe, make_dataset

    recipe = load_recipe()
    recipe["splits"] = {"quick": {"train": 16, "val": 8, "test": 8}, "full": {"train": 16, "val": 8, "test": 8}}
    recipe["image_side"] = [200, 260]
    recipe["object_side"] = [40, 110]
    recipe["objects_per_image"] = [1, 3]
    return make_dataset(tmp_path_factory.mktemp("tiny") / "voc", quick=True, recipe=recipe)


@pytest.mark.slow
def test_end_to_end_train_detect_evaluate(tiny_dataset, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train = ("train", "--data", tiny_dataset, "--out", run, "--quick", "--device", "cpu", "--scales", "224,320")
    assert run_cli(*train) == 0
    assert json.loads((run / "config.json").read_text())["config"]["scales"] == [224, 320]
    assert run_cli(*train) == 0  # a second run resumes from the cached stages

    # A pipeline that differs only in a later stage's setting reads the same window features.
    with monkeypatch.context() as patch:
        patch.setattr(SPPFeatureExtractor, "__call__", lambda *_: pytest.fail("features recomputed"))
        config = PipelineConfig.default(True, scales=(224, 320), iterations=7)
        other = Pipeline(tiny_dataset, tmp_path / "other", quick=True, device="cpu", config=config,
                         progress=False, features_dir=run / "features")
        assert len(other.windows("train")["features"]) > 0

    images = sorted((tiny_dataset / "JPEGImages").glob("test_*.jpg"))[:2]
    out = tmp_path / "detections.json"
    assert run_cli("detect", "--run", run, *images, "--out", out, "--draw", tmp_path / "drawn",
                   "--score-threshold", "-1") == 0
    rows = json.loads(out.read_text())
    assert rows and set(rows[0]) == {"image", "label", "score", "box"}
    assert {r["image"] for r in rows} <= {p.name for p in images}
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 2

    assert run_cli("evaluate", "--run", run, "--data", tiny_dataset, "--split", "test") == 0
    report = json.loads((run / "evaluation_test.json").read_text())
    # chance level (random scores over ~1000 proposals) is about 0.01
    assert report["mAP"] > 0.15, report
