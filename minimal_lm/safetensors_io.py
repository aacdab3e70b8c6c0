"""A small safetensors reader and writer: a JSON header, then raw little-endian tensors.

Reading maps each tensor with np.memmap, so a checkpoint is read tensor by tensor and never held twice.
Every structural problem (short file, bad header, offsets past the end, size not matching shape and
dtype) is a CheckpointError naming the file and the tensor. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from minimal_lm.files import atomic_file

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint file or directory is malformed or does not match its config; the message names it."""


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(name)`, `dtype(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open safetensors file ({e.strerror})") from None
        if size < 8:
            raise CheckpointError(f"{self.path}: file is {size} bytes, too short for a safetensors header")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(
                    f"{self.path}: header length {n} exceeds the file size {size} (truncated or not safetensors)")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise CheckpointError(f"{self.path}: __metadata__ is not a JSON object")
        self._data_start = 8 + n
        self._entries = {}
        data_size = size - self._data_start
        for name, e in header.items():
            self._entries[name] = self._check_entry(name, e, data_size)

    def _check_entry(self, name, e, data_size):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets, got {e!r}")
        if not isinstance(e["dtype"], str) or e["dtype"] not in DTYPES:
            raise CheckpointError(f"{where}: dtype {e['dtype']!r} is not supported; "
                                  f"expected one of {', '.join(DTYPES)}")
        if not isinstance(e["shape"], list) or not all(_is_uint(d) for d in e["shape"]):
            raise CheckpointError(f"{where}: shape {e['shape']!r}: expected a list of integers >= 0")
        if not isinstance(e["data_offsets"], list) or len(e["data_offsets"]) != 2 or not all(
                _is_uint(o) for o in e["data_offsets"]):
            raise CheckpointError(f"{where}: data_offsets {e['data_offsets']!r}: expected [begin, end], integers >= 0")
        dtype, shape, (begin, end) = DTYPES[e["dtype"]], tuple(e["shape"]), e["data_offsets"]
        if not 0 <= begin <= end:
            raise CheckpointError(f"{where}: bad data_offsets {[begin, end]}")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(
                f"{where}: {end - begin} bytes do not hold shape {list(shape)} of {e['dtype']}")
        if end > data_size:
            raise CheckpointError(
                f"{where}: data ends at byte {end} but the file holds only {data_size} bytes of data "
                "(truncated file?)")
        return dtype, shape, begin

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._entry(name)[0]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory map (no copy until it is used)."""
        dtype, shape, begin = self._entry(name)
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin, shape=shape)

    def _entry(self, name):
        if name not in self._entries:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self._entries[name]


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Write `tensors` (name -> array) as safetensors, atomically (minimal_lm.files.atomic_file)."""
    path = os.fspath(path)
    header, offset, arrays = {}, 0, []
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype not in _NAMES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {a.dtype}, which safetensors cannot store")
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
