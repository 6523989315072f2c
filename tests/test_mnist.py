"""MNIST loaders: IDX (plain and gzipped), Keras npz, the embedded subset, corrupt files, download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from ntkdyn.data import mnist as M


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x08 << 8) | arr.ndim if magic is None else magic
    return (
        struct.pack(">I", magic)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "train": (
            rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 12, dtype=np.uint8),
        ),
        "test": (
            rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 5, dtype=np.uint8),
        ),
    }


def _write_idx(directory: Path, arrays, gz: bool) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, (img_stem, lab_stem) in M._SPLITS.items():
        imgs, labs = arrays[split]
        for stem, arr in ((img_stem, imgs), (lab_stem, labs)):
            data = _idx_bytes(arr)
            name = stem + (".gz" if gz else "")
            if gz:
                data = gzip.compress(data, mtime=0)
            (directory / name).write_bytes(data)
            written[name] = data
    return written


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, arrays, gz):
    _write_idx(tmp_path, arrays, gz)
    for split in ("train", "test"):
        ds = M.load_mnist(tmp_path, split=split)
        np.testing.assert_array_equal(ds.images, arrays[split][0])
        np.testing.assert_array_equal(ds.labels, arrays[split][1])
        assert ds.source == "files" and ds.split == split and ds.n_images == len(arrays[split][1])
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.uint8
        assert str(ds.n_images) in ds.describe()


def test_torchvision_layout(tmp_path, arrays):
    _write_idx(tmp_path / "MNIST" / "raw", arrays, gz=True)
    ds = M.load_mnist(tmp_path)
    np.testing.assert_array_equal(ds.labels, arrays["train"][1])


def test_npz(tmp_path, arrays):
    np.savez(
        tmp_path / "mnist.npz",
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
    )
    ds = M.load_mnist(tmp_path, split="test", source="files")
    np.testing.assert_array_equal(ds.images, arrays["test"][0])
    assert ds.origin.endswith("mnist.npz")


def test_env_var_and_cache(tmp_path, arrays, monkeypatch):
    _write_idx(tmp_path / "env", arrays, gz=False)
    monkeypatch.setenv(M.DATA_DIR_ENV, str(tmp_path / "env"))
    ds = M.load_mnist(source="files", cache_dir=tmp_path / "nocache")
    assert ds.n_images == 12
    monkeypatch.delenv(M.DATA_DIR_ENV)
    _write_idx(tmp_path / "xdg" / "ntkdyn" / "mnist", arrays, gz=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.default_cache_dir() == tmp_path / "xdg" / "ntkdyn" / "mnist"
    assert M.load_mnist(source="files").n_images == 12


def test_embedded_subset():
    ds = M.load_mnist(source="embedded")
    assert ds.source == "embedded" and ds.n_images == 5000 and ds.images.shape == (5000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 500))
    # interleaved: every prefix of 10k images holds each digit k times
    np.testing.assert_array_equal(ds.labels[:20], np.tile(np.arange(10), 2))
    assert np.bincount(ds.labels[4166:], minlength=10).min() >= 83
    # a real digit, not noise: ink concentrated in the centre
    mean = ds.images.astype(float).mean(0)
    assert mean[10:18, 10:18].mean() > 5 * mean[:4, :].mean()
    with pytest.raises(ValueError, match="split"):
        M.load_mnist(source="embedded", split="test")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path, arrays, gz):
    written = _write_idx(tmp_path, arrays, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(written[name][:-100])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")) as exc:
        M.load_mnist(tmp_path)
    assert "truncated" in str(exc.value) or "corrupt" in str(exc.value)


def test_wrong_magic(tmp_path, arrays):
    _write_idx(tmp_path, arrays, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays["train"][1], magic=2051))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: wrong magic"):
        M.load_mnist(tmp_path)


def test_not_gzip(tmp_path, arrays):
    _write_idx(tmp_path, arrays, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        M.load_mnist(tmp_path)


def test_mismatched_counts(tmp_path, arrays):
    _write_idx(tmp_path, arrays, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays["train"][1][:5]))
    with pytest.raises(ValueError, match="12 images but labels"):
        M.load_mnist(tmp_path)


def test_corrupt_npz(tmp_path, arrays):
    np.savez(tmp_path / "mnist.npz", x_train=arrays["train"][0], y_train=arrays["train"][1])
    data = (tmp_path / "mnist.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="mnist.npz"):
        M.load_mnist(tmp_path)
    np.savez(tmp_path / "mnist.npz", images=arrays["train"][0])
    with pytest.raises(ValueError, match="x_train"):
        M.load_mnist(tmp_path)


def test_missing_files(tmp_path, arrays):
    with pytest.raises(FileNotFoundError, match="neither"):
        M.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load_mnist(tmp_path / "nope")
    _write_idx(tmp_path, arrays, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz: missing"):
        M.load_mnist(tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="source"):
        M.load_mnist(source="web")
    with pytest.raises(ValueError, match="split"):
        M.load_mnist(split="val")
    with pytest.raises(ValueError, match="mirrors"):
        M.download_mnist(tmp_path, mirrors=[])


# ------------------------------------------------------------------------------- loopback download


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _serve(root: Path, arrays, sub: str, algo: str) -> dict[str, str]:
    written = _write_idx(root / sub, arrays, gz=True)
    return {name: hashlib.new(algo, data).hexdigest() for name, data in written.items()}


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_download_via_loopback(tmp_path, server, arrays, algo):
    root, url = server
    sums = _serve(root, arrays, "good", algo)
    cache = tmp_path / "cache"
    ds = M.load_mnist(
        source="download", cache_dir=cache, mirrors=[url + "missing/", url + "good/"], files=sums
    )
    assert ds.source == "download"
    np.testing.assert_array_equal(ds.images, arrays["train"][0])
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)
    # second call: verified cache, no server needed
    M.download_mnist(cache, mirrors=["http://127.0.0.1:9/"], files=sums, timeout=1)


def test_corrupt_download_leaves_nothing(tmp_path, server, arrays):
    root, url = server
    sums = _serve(root, arrays, "good", "md5")
    bad = root / "bad"
    bad.mkdir()
    for name in sums:
        (bad / name).write_bytes(b"corrupted payload")
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="checksum"):
        M.download_mnist(cache, mirrors=[url + "bad/"], files=sums)
    assert not cache.exists() or list(cache.iterdir()) == []
    # falls through the corrupt mirror to a good one
    M.download_mnist(cache, mirrors=[url + "bad/", url + "good/"], files=sums)
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)


def test_auto_takes_local_files_else_the_embedded_subset_never_the_network(
    tmp_path, server, arrays, monkeypatch
):
    monkeypatch.delenv(M.DATA_DIR_ENV, raising=False)
    root, url = server
    sums = _serve(root, arrays, "good", "md5")

    def no_network(*args, **kwargs):
        raise AssertionError("source='auto' must not download")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default source is no fallback: no warning
        with monkeypatch.context() as m:
            m.setattr(M.urllib.request, "urlopen", no_network)
            ds = M.load_mnist(cache_dir=tmp_path / "c1", mirrors=[url + "good/"], files=sums)
    assert ds.source == "embedded" and ds.n_images == 5000
    assert not (tmp_path / "c1").exists()
    # downloading is an explicit choice; afterwards the cached files are local files
    ds = M.load_mnist(
        source="download", cache_dir=tmp_path / "c1", mirrors=[url + "good/"], files=sums
    )
    assert ds.source == "download"
    ds = M.load_mnist(cache_dir=tmp_path / "c1", mirrors=[url + "nothing/"], files=sums)
    assert ds.source == "files"
    # $NTKDYN_DATA_DIR counts as local files
    _write_idx(tmp_path / "env", arrays, gz=True)
    monkeypatch.setenv(M.DATA_DIR_ENV, str(tmp_path / "env"))
    assert M.load_mnist(cache_dir=tmp_path / "c2").source == "files"


@pytest.mark.parametrize(
    "payload",
    [b"this is not an archive at all", pickle.dumps({"x_train": [1, 2, 3]})],
    ids=["garbage", "pickle"],
)
def test_garbage_npz_says_what_is_wrong_and_never_suggests_unpickling(tmp_path, payload):
    (tmp_path / "mnist.npz").write_bytes(payload)
    with pytest.raises(ValueError, match="not a NumPy .npz archive") as info:
        M.load_mnist(tmp_path)
    assert "mnist.npz" in str(info.value) and "pickle" not in str(info.value).lower()


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    images = np.empty(3, dtype=object)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="object arrays") as info:
        M.load_mnist(tmp_path)
    assert "allow_pickle" not in str(info.value)
