import numpy as np
import pytest

from sppnet_lite import cache


def test_config_hash_is_stable_and_order_free():
    assert cache.config_hash({"a": 1, "b": [1, 2]}) == cache.config_hash({"b": [1, 2], "a": 1})
    assert cache.config_hash({"a": 1}) != cache.config_hash({"a": 2})


def test_array_hash_sees_content_dtype_and_shape():
    a = np.arange(6, dtype=np.uint8)
    assert cache.array_hash(a) == cache.array_hash(a.copy())
    assert cache.array_hash(a) != cache.array_hash(a.reshape(2, 3))
    assert cache.array_hash(a) != cache.array_hash(a.astype(np.int16))
    b = a.copy()
    b[0] = 9
    assert cache.array_hash(a) != cache.array_hash(b)


def test_npz_round_trip_and_no_pickle(tmp_path):
    path = cache.save_npz_atomic(tmp_path / "x.npz", boxes=np.ones((3, 4), np.float32))
    assert cache.load_npz(path)["boxes"].shape == (3, 4)
    np.savez(tmp_path / "evil.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        cache.load_npz(tmp_path / "evil.npz")


def test_interrupted_write_leaves_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "result.json"
    cache.save_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError), cache.atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed")
    assert path.read_text().strip().startswith("{") and '"v": 1' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_file_hash_changes_with_content(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    h = cache.file_hash(p)
    p.write_bytes(b"abd")
    assert cache.file_hash(p) != h


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    path = cache.save_json_atomic(tmp_path / "r.json", {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~cache.UMASK
    assert os.access(path, os.R_OK)


def test_weights_round_trip_as_plain_arrays(tmp_path):
    import torch

    state = {"conv.weight": torch.randn(2, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7),
             "scale": torch.tensor(0.5, dtype=torch.float64)}
    path = cache.save_weights(tmp_path / "w.npz", state, {"arch": "x", "widths": [1, 2]})
    loaded, meta = cache.load_weights(path)
    assert meta == {"arch": "x", "widths": [1, 2]} and list(loaded) == list(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        torch.testing.assert_close(loaded[name], tensor)
    with np.load(path, allow_pickle=False) as data:  # readable without unpickling anything
        assert "__meta__" in data.files
    assert cache.load_weights(cache.save_weights(tmp_path / "bare.npz", {}))[1] == {}


def test_weights_missing_or_damaged(tmp_path):
    import torch

    with pytest.raises(FileNotFoundError, match="no file at"):
        cache.load_weights(tmp_path / "missing.npz")
    path = cache.save_weights(tmp_path / "w.npz", {"a": torch.zeros(100)}, {"k": 1})
    (tmp_path / "garbage.npz").write_bytes(b"not an npz at all")
    with pytest.raises(ValueError, match="not a sppnet-lite array file"):
        cache.load_weights(tmp_path / "garbage.npz")
    cache.save_npz_atomic(tmp_path / "plain.npz", a=np.zeros(3))  # an npz, but no metadata
    with pytest.raises(ValueError, match="not a sppnet-lite array file"):
        cache.load_weights(tmp_path / "plain.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])  # an interrupted copy
    with pytest.raises(ValueError, match="not a sppnet-lite array file"):
        cache.load_weights(tmp_path / "cut.npz")
