"""The front door, fuzzed: every loader and every settings check meets random, truncated and hostile
input and either reads it or refuses it with one line naming the file or the flag.

Each property runs twice: a short seeded run in the default suite (``SHORT`` examples, derandomised,
so the same cases every time) and a long one marked ``slow`` (``LONG`` examples). Besides the
random cases, targeted tests check that sizes declared in a header (an IDX file claiming 2^31 images,
an ``.npy`` entry claiming terabytes, an image claiming 10^10 pixels) are refused before memory is
allocated. ``COUNTS`` records how many cases each property ran (printed with ``-s``).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gzip
import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ntkdyn.data import celeba as C
from ntkdyn.data import mnist as M
from ntkdyn.data.images import decode_image
from ntkdyn.data.metadata import load_metadata_folder
from ntkdyn.data.npz import load_npz
from ntkdyn.errors import InputError
from ntkdyn.settings import ConfigError, check, each, integer, number, one_of, optional, pair

SHORT, LONG = 50, 2000
BUDGETS = [
    pytest.param(SHORT, id="short"),
    pytest.param(LONG, id="long", marks=pytest.mark.slow),
]
COUNTS: collections.Counter[str] = collections.Counter()


def fuzz(strategy, budget: int, name: str):
    """Run ``body(case)`` on ``budget`` seeded cases drawn from ``strategy``."""

    def wrap(body):
        def counted(case):
            COUNTS[name] += 1
            body(case)

        run = settings(
            max_examples=budget,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(counted))
        run()
        print(f"fuzz {name}: {COUNTS[name]} cases")
        return run

    return wrap


def refused_or_read(read, *names: str, also: tuple[type[BaseException], ...] = ()):
    """``read()``'s value, or None when it refuses with one line that names one of ``names``."""
    try:
        return read()
    except (InputError, *also) as exc:
        text = str(exc)
        assert "\n" not in text, text
        assert any(n in text for n in names), (names, text)
        return None


def mutations(valid: list[bytes]):
    """A valid file with bytes overwritten and/or cut short, or plain random bytes."""

    @st.composite
    def mutate(draw):
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(0, 6))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
        return bytes(data if cut is None else data[:cut])

    return st.one_of(mutate(), st.binary(max_size=300), st.just(b""))


# ------------------------------------------------------------------------------- MNIST IDX files


def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


_IMAGES = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
_LABELS = np.array([1, 7, 3], np.uint8)
_VALID_IDX = [_idx(_IMAGES, 2051), _idx(_LABELS, 2049), _idx(_IMAGES[:1], 2051)]


@st.composite
def idx_headers(draw):
    """A plausible IDX header (any dimension count and sizes) over a body of any length."""
    ndim = draw(st.integers(0, 5))
    dims = draw(
        st.lists(
            st.one_of(st.integers(0, 30), st.sampled_from([28, 2**31, 2**32 - 1])),
            min_size=ndim,
            max_size=ndim,
        )
    )
    magic = draw(st.sampled_from([0x0800, 0x0900, 0x0D00])) | ndim
    need = int(np.prod(dims, dtype=object)) if dims else 0
    body = bytes(need) if need <= 4000 and draw(st.booleans()) else draw(st.binary(max_size=200))
    return struct.pack(f">I{ndim}I", magic, *dims) + body


idx_bytes = st.tuples(st.one_of(mutations(_VALID_IDX), idx_headers()), st.booleans())


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_mnist_idx(tmp_path, budget):
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(_LABELS, 2049))

    @fuzz(idx_bytes, budget, "mnist idx")
    def _(case):
        data, gz = case
        for old in tmp_path.glob("train-images-idx3-ubyte*"):
            old.unlink()
        name = "train-images-idx3-ubyte" + (".gz" if gz else "")
        (tmp_path / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
        got = refused_or_read(lambda: M.load_mnist(tmp_path, source="files"), name)
        if got is not None:
            assert got.images.shape == (3, 28, 28) and got.images.dtype == np.uint8
        raw = tmp_path / "any.idx"
        raw.write_bytes(data)
        arr = refused_or_read(lambda: M.read_idx(raw), "any.idx")
        assert arr is None or arr.dtype == np.uint8


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declaring_2_31_images_is_refused_before_allocating(tmp_path, gz):
    header = struct.pack(">IIII", 2051, 2**31, 28, 28) + bytes(28 * 28 * 2)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(header) if gz else header)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(_LABELS, 2049))
    tracemalloc.start()
    try:
        with pytest.raises(
            InputError, match=r"train-images-idx3-ubyte.*header \(2147483648, 28, 28\)"
        ):
            M.load_mnist(tmp_path, source="files")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # the 1.7 TB it declares is never asked for


def test_idx_with_a_zero_dimension_beside_huge_ones_is_refused(tmp_path):
    """Found by the long fuzz run: size 0 fits the file, but numpy cannot shape (0, 2, 2^31, 2^31)."""
    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(">IIIII", 0x0804, 0, 2, 2**31, 2**31))
    with pytest.raises(InputError, match=r"x\.idx: its header declares the impossible shape"):
        M.read_idx(path)


def test_gz_idx_longer_than_its_header_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx(_LABELS, 2049) + b"\0" * 5))
    with pytest.raises(InputError, match=r"x\.gz: .* holds more"):
        M.read_idx(path)


# ------------------------------------------------------------------------------------ .npz files


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_declaring(shape: tuple[int, ...], key: str = "x_train") -> bytes:
    """A zip whose .npy entry's header declares ``shape`` (uint8) over a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{key}.npy", header.getvalue() + bytes(16))
    return buf.getvalue()


_VALID_MNIST_NPZ = [
    _npz_bytes(x_train=_IMAGES, y_train=_LABELS),
    _npz_bytes(x_train=_IMAGES[:1], y_train=_LABELS[:1], x_test=_IMAGES, y_test=_LABELS),
]

dtypes = st.sampled_from(
    ["uint8", "int8", "int64", "float16", "float32", "float64", "bool", "complex64", "U5", "S5"]
)


@st.composite
def npz_arrays(draw, keys: tuple[str, ...]):
    """An .npz of some of ``keys``, each of a random dtype and shape, values NaN and inf included."""
    out = {}
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys))):
        dtype = np.dtype(draw(dtypes))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
        if dtype.kind in "fc":
            elements = st.floats(allow_nan=True, allow_infinity=True, width=16)
        elif dtype.kind in "US":
            words = ["train", "val", "test", "x", "", "1"]
            elements = st.sampled_from([w.encode() if dtype.kind == "S" else w for w in words])
        else:
            elements = None
        out[key] = draw(hnp.arrays(dtype, shape, elements=elements))
    return out


mnist_npz = st.one_of(
    mutations(_VALID_MNIST_NPZ),
    npz_arrays(("x_train", "y_train", "x_test")).map(lambda a: _npz_bytes(**a)),
    st.sampled_from([(2**31, 28, 28), (2**40,), (3, 28, 28), (0,)]).map(_npz_declaring),
)


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_mnist_npz(tmp_path, budget):
    @fuzz(mnist_npz, budget, "mnist npz")
    def _(data):
        (tmp_path / "mnist.npz").write_bytes(data)
        got = refused_or_read(lambda: M.load_mnist(tmp_path, source="files"), "mnist.npz")
        if got is not None:
            assert got.images.ndim == 3 and got.images.shape[1:] == (28, 28)
            assert got.labels.shape == (got.images.shape[0],) and got.labels.max(initial=0) <= 9


def test_npz_entry_declaring_terabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    path.write_bytes(_npz_declaring((2**40, 8), key="x"))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"--data: .*huge\.npz: array 'x' declares shape"):
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


_X = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
_VALID_USER_NPZ = [
    _npz_bytes(x=_X, y=np.array([0, 1] * 3)),
    _npz_bytes(
        x=_X,
        y=np.array([-1, 1] * 3),
        groups=np.array([0, 1, 2, 3, 0, 1]),
        group_names=np.array(["a", "b", "c", "d"]),
        split=np.array(["train", "train", "val", "val", "test", "test"]),
    ),
]
user_npz = st.tuples(
    st.one_of(
        mutations(_VALID_USER_NPZ),
        npz_arrays(("x", "y", "groups", "group_names", "split")).map(lambda a: _npz_bytes(**a)),
    ),
    st.sampled_from(["train", "val", "test"]),
    st.one_of(st.none(), st.integers(-1, 8)),
)


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_user_npz(tmp_path, budget):
    path = tmp_path / "mine.npz"

    @fuzz(user_npz, budget, "user npz")
    def _(case):
        data, split, n = case
        path.write_bytes(data)
        got = refused_or_read(
            lambda: load_npz(path, split=split, n=n), "mine.npz", "--split", "--n"
        )
        if got is not None:
            assert got.x.dtype == np.float32 and np.isfinite(got.x).all()
            assert set(np.unique(got.y).tolist()) <= {0, 1} and len(got.y) == len(got.x) >= 1


# ------------------------------------------------------------------ CelebA attribute and partition


_NAMES = ["Blond_Hair", "Male", "Young"]


def _attr_txt(rows: int) -> str:
    lines = [str(rows), " ".join(_NAMES)]
    lines += [f"{i:06d}.jpg " + " ".join(["1", "-1", "1"]) for i in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


def _attr_csv(rows: int) -> str:
    lines = ["image_id," + ",".join(_NAMES)]
    lines += [f"{i:06d}.jpg,1,-1,1" for i in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


_TOKENS = ["1", "-1", "0", "2", "x", "", "3", "1.0", "000001.jpg", "image_id", "partition"]
_TOKENS += ["Blond_Hair", "Male", "99999999999999999999", "\t", "\x00", "é", '"', ","]
celeba_text = st.one_of(
    mutations(
        [_attr_txt(3).encode(), _attr_csv(3).encode(), b"000001.jpg 0\n000002.jpg 2\n"]
        + [b"image_id,partition\n000001.jpg,0\n"]
    ),
    st.lists(st.lists(st.sampled_from(_TOKENS), max_size=6).map(" ".join), max_size=6).map(
        lambda lines: "\n".join(lines).encode()
    ),
)


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_celeba_metadata_files(tmp_path, budget):
    @fuzz(st.tuples(celeba_text, st.sampled_from([".txt", ".csv"])), budget, "celeba files")
    def _(case):
        data, suffix = case
        attr = tmp_path / f"list_attr_celeba{suffix}"
        part = tmp_path / f"list_eval_partition{suffix}"
        attr.write_bytes(data)
        part.write_bytes(data)
        got = refused_or_read(lambda: C.read_attributes(attr), attr.name)
        if got is not None:
            files, names, values = got
            assert values.shape == (len(files), len(names)) and set(np.unique(values)) <= {-1, 1}
        parts = refused_or_read(lambda: C.read_partition(part), part.name)
        assert parts is None or set(parts.values()) <= {0, 1, 2}
        attr.unlink()
        part.unlink()


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_load_celeba(tmp_path, budget):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")

    @fuzz(celeba_text, budget, "celeba folder")
    def _(data):
        (tmp_path / "list_attr_celeba.txt").write_bytes(data)
        got = refused_or_read(
            lambda: C.load_celeba(tmp_path), "list_attr_celeba", "target", "spurious"
        )
        assert got is None or set(got.splits) == {"train", "val", "test"}


# ------------------------------------------------------------------------- metadata.csv folders


_CELLS = ["images/1.png", "images/2.png", "gone.png", "0", "1", "2", "-1", "0.0", "1.0", "x", ""]
_CELLS += ["nan", "1e400", "\x00", "é", '"', " 1 "]


@st.composite
def metadata_csv(draw):
    header = draw(
        st.one_of(
            st.just(["filename", "split", "y", "a"]),
            st.lists(st.sampled_from(["filename", "split", "y", "a", "id", ""]), max_size=5),
        )
    )
    rows = draw(st.lists(st.lists(st.sampled_from(_CELLS), max_size=6), max_size=8))
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    return buf.getvalue().encode()


_VALID_META = b"filename,split,y,a\nimages/1.png,0,0,1\nimages/2.png,1,1,0\nimages/1.png,2,1,1\n"


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_metadata_folder(tmp_path, budget):
    (tmp_path / "images").mkdir()
    for i in (1, 2):
        Image.new("RGB", (5, 7), (i * 40, 0, 0)).save(tmp_path / "images" / f"{i}.png")

    @fuzz(st.one_of(metadata_csv(), mutations([_VALID_META])), budget, "metadata folder")
    def _(data):
        (tmp_path / "metadata.csv").write_bytes(data)
        got = refused_or_read(
            lambda: load_metadata_folder(tmp_path),
            "metadata.csv",
            also=(FileNotFoundError,),  # a listed image missing: named, a user's error (exit 2)
        )
        if got is not None:
            for split in got.splits.values():
                assert len(split) >= 1 and set(np.unique(split.group)) <= {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------- images


def _image_bytes(fmt: str, size=(9, 6), mode="RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(
        np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


_VALID_IMAGES = [
    _image_bytes("PNG"),
    _image_bytes("JPEG"),
    _image_bytes("GIF", mode="P"),
    _image_bytes("BMP"),
    _image_bytes("PNG", (1, 1), "L"),
    _image_bytes("TIFF"),
]


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` RGB pixels, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


images = st.tuples(
    st.one_of(
        mutations(_VALID_IMAGES),
        st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(
            lambda wh: _png_declaring(*wh)
        ),
    ),
    st.integers(1, 12),
    st.one_of(st.none(), st.integers(-2, 12)),
)


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_decode_image(tmp_path, budget):
    path = tmp_path / "face.jpg"

    @fuzz(images, budget, "images")
    def _(case):
        data, size, crop = case
        path.write_bytes(data)
        arr = refused_or_read(lambda: decode_image(path, size, crop=crop), "face.jpg")
        assert arr is None or (arr.shape == (size, size, 3) and arr.dtype == np.uint8)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [12_000, 100_000])
def test_image_declaring_billions_of_pixels_is_refused_before_decoding(tmp_path, side):
    """144 million pixels (PIL would only warn) and 10 billion (PIL's own limit): both refused
    from the header, before a pixel is decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(side, side))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"image .*bomb\.png: (declares|cannot be decoded)"):
            decode_image(path, 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


# ------------------------------------------------------------------------------- settings checks


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(), st.text(max_size=2)), max_size=3),
    st.lists(st.integers(-3, 3), max_size=3).map(tuple),
    st.complex_numbers(max_magnitude=10),
    st.sampled_from([np.float32("nan"), np.int64(3), np.float64(1e308), np.bool_(True)]),
)
RULES = {
    "integer": integer(1),
    "bounded": integer(0, 10),
    "number": number(0.0, low_open=True),
    "unit": number(0.0, 1.0, high_open=True),
    "one_of": one_of("erm", "sd", 3),
    "optional": optional(number(0.0)),
    "pair": pair(number(0.0)),
    "each": each(integer(1)),
}


@pytest.mark.parametrize("budget", BUDGETS)
def test_fuzz_settings_rules(budget):
    @fuzz(st.tuples(st.sampled_from(sorted(RULES)), values), budget, "settings rules")
    def _(case):
        name, value = case

        class Config:  # the rule reads the field off any object
            pass

        setattr(Config, name, value)
        try:
            check(Config, {name: RULES[name]})
        except ConfigError as exc:
            assert exc.field == name and str(exc).startswith(f"{name}: expected ")
            assert "\n" not in str(exc)


# ------------------------------------------------------------------ command lines, up to computing


class _Stop(Exception):
    """Raised where a command would start computing: its flags passed every check."""


_INTS = ["0", "1", "-1", "2", "3", "7", "100", "-0", "99999999999999999999"]
_FLOATS = [*_INTS, "0.5", "1e-3", "-0.0", "nan", "inf", "-inf", "1e400", "1e-320", "-2.5"]
_OTHER = ["abc", "", "none", "vmap:2@all", "map@1", "vmap:0", "erm", "sd", "auto"]
_SKIP = {"--help", "--version", "--out", "--make-fixture", "--replot", "--merge", "--resume"}
_SKIP |= {"--U", "--pretrained", "--data-dir", "--debug", "-h"}
COMMANDS = ["simulate", "theory", "moons", "cmnist", "groups", "celeba"]
#: Flags every case starts with, so most cases get past the required ones (later flags win).
_BASE = {"simulate": ["--s", "6", "2"], "groups": ["--quick"], "celeba": ["--quick"]}


def _options(command: str) -> list[tuple[str, object, tuple[str, ...]]]:
    """Each flag of ``command`` with its nargs and the values to draw for it (by its type)."""
    from ntkdyn.cli import build_parser

    parser = build_parser(only=command)
    sub = parser._subparsers._group_actions[0].choices[command]
    out = []
    for action in sub._actions:
        flags = [f for f in action.option_strings if f.startswith("--") and f not in _SKIP]
        if not flags or set(action.option_strings) & _SKIP:
            continue
        kind = getattr(action.type, "__name__", "")
        if action.choices:
            pool = [str(getattr(c, "value", c)) for c in action.choices]
        else:
            pool = {"int": _INTS, "float": _FLOATS}.get(kind, _OTHER + _FLOATS[:4])
        out.append((flags[0], action.nargs, tuple(pool)))
    return out


@st.composite
def command_lines(draw, command: str, options):
    """``command`` with its base flags and up to four flags of random, mostly well-typed values."""
    argv = [command, *_BASE.get(command, []), *draw(st.sampled_from([[], ["--quick"]]))]
    for flag, nargs, pool in draw(st.lists(st.sampled_from(options), max_size=4, unique=True)):
        if nargs == 0:
            argv.append(flag)
            continue
        if nargs is None or nargs == "?":
            count = 1
        else:
            count = nargs if isinstance(nargs, int) else draw(st.integers(1, 3))
        value = st.one_of(st.sampled_from(pool), st.sampled_from(_OTHER))
        value = st.sampled_from(pool) if draw(st.integers(0, 5)) else value
        argv += [flag, *draw(st.lists(value, min_size=count, max_size=count))]
    return argv


@pytest.mark.e2e
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("budget", [pytest.param(20, id="short"), BUDGETS[1]])
def test_fuzz_command_line_flags(tmp_path, monkeypatch, command, budget):
    """Random values for a command's flags: exit 2 with one line, or every check passes (the
    command reaches its first computing step, where the test stops it)."""
    from ntkdyn import cli

    def stop(*args, **kwargs):
        raise _Stop("passed every check")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ntkdyn.runs.files.check_writable", stop)
    monkeypatch.setattr("ntkdyn.train.dataparallel.initialize_multihost", stop)
    monkeypatch.setattr("ntkdyn.experiments.colored_mnist.run", stop)
    options = _options(command)

    @fuzz(command_lines(command, options), budget, f"cli {command}")
    def _(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main([*argv, "--out", str(tmp_path / "out")])
        text = err.getvalue()
        if rc == 1:
            assert "_Stop: passed every check" in text, (argv, text)
        else:
            last = text.strip().splitlines()[-1] if text.strip() else ""
            assert rc == 2 and "Traceback" not in text, (argv, rc, text)
            assert last.startswith(f"ntkdyn {command}: error: "), (argv, text)
