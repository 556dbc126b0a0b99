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
