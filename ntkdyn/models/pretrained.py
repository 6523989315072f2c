"""Import ImageNet ResNet weights (torchvision ``.pth`` or timm ``.safetensors``) into :mod:`ntkdyn.models.resnet`.

Both torchvision and timm name ResNet tensors the same way (``conv1.weight``, ``bn1.running_mean``,
``layer3.4.conv2.weight``, ``layer1.0.downsample.1.bias``, ``fc.weight``), so one converter serves
both. Conversions: convolution weights OIHW → HWIO, linear weights (out, in) → (in, out), batch-norm
``weight``/``bias`` → ``scale``/``bias`` and ``running_mean``/``running_var`` → ``batch_stats``
``mean``/``var``; ``num_batches_tracked`` is dropped. The ImageNet head (``fc``) is skipped by
default, since the CelebA model has one logit (Pezeshki et al. 2021, Sec. 5).

File readers, with no dependency beyond numpy:

* ``.safetensors``: 8-byte little-endian header length, a JSON header
  (``name → {dtype, shape, data_offsets}``), then the raw little-endian bytes.
* ``.pth``: read with ``torch.load(weights_only=True)`` when torch is installed; otherwise the zip
  format of ``torch.save`` (PyTorch ≥ 1.6) is read directly — ``data.pkl`` is unpickled with a
  restricted unpickler that only rebuilds tensors from the ``data/<key>`` storage records. Files in
  the legacy pre-1.6 format need torch.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ntkdyn.runs import atomic_write_bytes

__all__ = [
    "read_safetensors",
    "write_safetensors",
    "read_torch_state_dict",
    "read_state_dict",
    "torch_resnet_to_flax",
    "load_pretrained_resnet",
]

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into numpy arrays (BF16 is widened to float32).

    Args:
        path: the file.

    Returns:
        name → array, in header order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a truncated file, a bad header, an unsupported dtype or out-of-range offsets.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained: {path} not found; pass a local .safetensors or .pth file"
        )
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too short to be a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(
            f"{path}: header length {n} exceeds the file size; the file is truncated or not safetensors"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    buf = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if not 0 <= begin <= end <= len(buf):
            raise ValueError(
                f"{path}: tensor {name!r} has data offsets {begin}..{end} outside the {len(buf)}-byte buffer"
            )
        if dtype == "BF16":
            arr = _bf16_to_f32(np.frombuffer(buf[begin:end], dtype="<u2"))
        elif dtype in _ST_DTYPES:
            arr = np.frombuffer(buf[begin:end], dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if arr.size != int(np.prod(shape)):
            raise ValueError(
                f"{path}: tensor {name!r} holds {arr.size} values, shape {shape} needs {int(np.prod(shape))}"
            )
        out[name] = arr.reshape(shape).copy()
    return out


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write numpy arrays as a ``.safetensors`` file (header padded to 8 bytes, as the reference writer), atomically.

    Args:
        path: output file.
        tensors: name → array (float64/32/16, int, uint8 or bool).
        metadata: optional string → string ``__metadata__``.

    Returns:
        ``path``.

    Raises:
        ValueError: an unsupported dtype.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _ST_NAMES:
            raise ValueError(f"tensors[{name!r}]: unsupported dtype {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return atomic_write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(chunks))


# ---- torch .pth without torch ------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_):
    arr = storage
    if not size:
        return arr[offset].copy()
    itemsize = arr.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        arr[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles only the records a tensor state dict needs; anything else is refused."""

    def __init__(self, fh, zf: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(fh)
        self._zf, self._prefix, self._path = zf, prefix, path

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ValueError(
            f"{self._path}: refuses to unpickle {module}.{name}; only tensor state dicts can be read without torch "
            "(install torch, or convert the file to .safetensors)"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self._path}: unsupported persistent record {pid[:2]!r}")
        raw = self._zf.read(f"{self._prefix}data/{key}")
        dt = _STORAGE_DTYPES[storage_type.name]
        if dt == "bf16":
            return _bf16_to_f32(np.frombuffer(raw, "<u2"))
        return np.frombuffer(raw, np.dtype(dt).newbyteorder("<"))


def _read_pth_without_torch(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not in the zip format of torch.save (PyTorch >= 1.6); reading the legacy format needs torch — "
            "install torch or convert the file to .safetensors"
        )
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        order = (
            zf.read(prefix + "byteorder").decode().strip()
            if prefix + "byteorder" in zf.namelist()
            else "little"
        )
        if order != "little":
            raise ValueError(f"{path}: big-endian tensors are not supported")
        with zf.open(pkl[0]) as fh:
            return _TorchUnpickler(fh, zf, prefix, path).load()


def read_torch_state_dict(
    path: str | os.PathLike, *, use_torch: bool | None = None
) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict as numpy arrays.

    Args:
        path: the ``.pth``/``.pt`` file.
        use_torch: use ``torch.load(weights_only=True)`` (default: when torch is importable);
            ``False`` forces the torch-free zip + pickle reader.

    Returns:
        name → array (checkpoint wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` unwrapped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained: {path} not found; pass a local .safetensors or .pth file"
        )
    if use_torch is None:
        try:
            import torch  # noqa: F401

            use_torch = True
        except ImportError:
            use_torch = False
    if use_torch:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        convert = lambda t: t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()  # noqa: E731
    else:
        obj = _read_pth_without_torch(path)
        convert = np.asarray
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    return {str(k): np.array(convert(v)) for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read weights from ``.safetensors`` (timm) or ``.pth``/``.pt``/``.bin`` (torchvision), by suffix.

    Args:
        path: the weights file.

    Returns:
        name → numpy array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an unknown suffix or an unreadable file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_torch_state_dict(path)
    raise ValueError(
        f"pretrained: {path} has suffix {path.suffix!r}; expected .safetensors or .pth"
    )


# ---- key mapping -------------------------------------------------------------------------------


def _flax_path(key: str) -> tuple[str, ...] | None:
    """torchvision/timm key → (collection, module..., leaf); None for keys we drop."""
    parts = key.split(".")
    leaf = parts[-1]
    if leaf == "num_batches_tracked":
        return None
    mods = parts[:-1]
    if not mods or not (
        mods[0] in ("conv1", "bn1", "fc") or (mods[0][:5] == "layer" and mods[0][5:].isdigit())
    ):
        return ("unknown", key)
    if mods[0].startswith("layer") and len(mods) >= 2:
        mods = [f"{mods[0]}_{mods[1]}"] + mods[2:]
    if len(mods) >= 2 and mods[-2] == "downsample":
        mods = mods[:-2] + [f"downsample_{mods[-1]}"]
    is_bn = any(m.startswith("bn") for m in mods[-1:]) or mods[-1:] == ["downsample_1"]
    if leaf == "running_mean":
        return ("batch_stats", *mods, "mean")
    if leaf == "running_var":
        return ("batch_stats", *mods, "var")
    if leaf == "weight":
        return ("params", *mods, "scale" if is_bn else "kernel")
    if leaf == "bias":
        return ("params", *mods, "bias")
    return ("unknown", key)


def torch_resnet_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """Convert torchvision/timm ResNet tensors to flat Flax paths ``(collection, module..., leaf)``.

    Convolution weights OIHW → HWIO; linear weights (out, in) → (in, out); batch-norm weight →
    ``scale``, running statistics → ``batch_stats``. A leading ``module.`` (DataParallel) is removed.

    Args:
        state_dict: tensor name → array.

    Returns:
        Flax path → float32 array (``num_batches_tracked`` dropped).

    Raises:
        ValueError: a key that is not part of a ResNet.
    """
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        path = _flax_path(key)
        if path is None:
            continue
        if path[0] == "unknown":
            raise ValueError(f"pretrained: tensor {key!r} is not part of a torchvision/timm ResNet")
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        out[path] = value
    return out


def load_pretrained_resnet(
    variables: Mapping[str, Any],
    source: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    include_head: bool = False,
) -> dict[str, Any]:
    """Replace a ResNet's initial variables by imported ImageNet weights.

    Every parameter and batch statistic of the model (except the ``fc`` head unless
    ``include_head``) must be found with the same shape; unexpected tensors are an error too, so a
    ResNet-18 file cannot silently half-load into a ResNet-50.

    Args:
        variables: ``{"params", "batch_stats"}`` from :func:`ntkdyn.models.resnet.init_resnet`.
        source: a ``.safetensors``/``.pth`` path or an already-read state dict.
        include_head: also load ``fc`` (the model must then have as many outputs as the file's head).

    Returns:
        New variables (float32), the head kept from ``variables`` unless ``include_head``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: missing, unexpected or mis-shaped tensors (named in the message).
    """
    import jax

    where = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    converted = torch_resnet_to_flax(state)
    flat = {}
    for coll in ("params", "batch_stats"):
        for kp, leaf in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
            flat[(coll, *(k.key for k in kp))] = leaf
    wanted = {p for p in flat if include_head or p[1] != "fc"}
    given = {p for p in converted if include_head or p[1] != "fc"}
    missing, unexpected = sorted(wanted - given), sorted(given - wanted)
    if missing or unexpected:
        fmt = lambda ps: ", ".join("/".join(p) for p in ps[:4]) + (" ..." if len(ps) > 4 else "")  # noqa: E731
        raise ValueError(
            f"pretrained: {where} does not match the model: {len(missing)} missing ({fmt(missing)}), "
            f"{len(unexpected)} unexpected ({fmt(unexpected)}); check --arch and --width against the file"
        )
    bad = [
        (p, converted[p].shape, flat[p].shape)
        for p in wanted
        if converted[p].shape != tuple(flat[p].shape)
    ]
    if bad:
        p, got, exp = bad[0]
        raise ValueError(
            f"pretrained: {where}: {'/'.join(p)} has shape {got}, the model expects {exp} ({len(bad)} mismatches)"
        )
    new = {
        coll: jax.tree.map(lambda x: x, dict(variables[coll])) for coll in ("params", "batch_stats")
    }
    for p in wanted:
        node = new[p[0]]
        for k in p[1:-1]:
            node[k] = dict(node[k])
            node = node[k]
        node[p[-1]] = np.asarray(converted[p], np.float32)
    return {**dict(variables), **new}
