import importlib
import json

import pytest

from sppnet_lite import config


@pytest.mark.parametrize(
    "env, expected",
    [({}, False), ({"CI": "true"}, True), ({"SPPNET_QUICK": "1"}, True),
     ({"SPPNET_QUICK": "0", "CI": "true"}, False), ({"CI": ""}, False), ({"CI": "false"}, False)],
)
def test_quick_mode_follows_the_environment(monkeypatch, env, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("SPPNET_QUICK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert importlib.reload(config).QUICK is expected
    monkeypatch.undo()
    importlib.reload(config)


def test_get_device_rejects_unknown_names():
    assert config.get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="'tpu'"):
        config.get_device("tpu")


def test_banner_names_mode_and_device():
    assert "mode=" in config.banner() and "device=" in config.banner()


def test_save_result_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path)
    path = config.save_result("demo", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
