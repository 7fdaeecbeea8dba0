"""Reading MXNet's NDArray list files (``*.params``, ``mx.nd.save``) with numpy alone, no mxnet import.

The layout, as MXNet writes it (``src/ndarray/ndarray.cc``: ``NDArray::Save(dmlc::Stream*, data, names)`` for
the list, ``NDArray::Save(dmlc::Stream*)`` / ``NDArray::Load`` / ``LegacyLoad`` / ``LegacyTShapeLoad`` for one
array; the vectors and strings are dmlc-core's ``serializer.h``), all little-endian:

- the list: uint64 magic ``0x112``, uint64 reserved, uint64 count and that many arrays, then uint64 count and
  that many names (uint64 length + bytes; ``arg:`` / ``aux:`` prefixed in a checkpoint); no names, or one per
  array.
- one array, by its first uint32:
  - ``0xF993FAC9`` (V2, MXNet >= 1.0) or ``0xF993FACA`` (V3, numpy shape semantics): int32 storage type (0 is
    dense; sparse ones are refused here), the shape (uint32 ndim, then ndim int64 dims), the context (int32
    device type, int32 device id), int32 dtype flag, then the data in C order.
  - ``0xF993FAC8`` (V1, MXNet 0.11): as V2 without the storage type.
  - anything else (MXNet < 0.11): that uint32 is already ndim, then ndim uint32 dims, context, dtype, data.

  An array with no shape (ndim 0, or -1 as MXNet 2 writes it; in V3 ndim 0 is a scalar and -1 or an unknown
  dim means none) is a "none" array: nothing follows its shape.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ...errors import ASDTUserError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

# mshadow's type flags (3rdparty/mshadow/mshadow/base.h, ``TypeFlag``); 12 is bfloat16, which numpy lacks
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_DTYPE_NAMES = {12: "bfloat16"}
_STYPE_NAMES = {1: "row_sparse", 2: "csr"}
_MAX_NDIM = 32  # MXNet allows more in principle; a larger count here is a corrupt file
_MAX_NAME = 1 << 16


class MXNetParamsError(ASDTUserError):
    """A file that is not a readable MXNet NDArray list, or one holding what this reader does not support."""


class _Reader:
    """Bounds-checked little-endian reads from a file, naming the path and offset in every error."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def fail(self, what: str) -> MXNetParamsError:
        return MXNetParamsError(f"{self.path} {what}")

    def bytes(self, n: int, what: str) -> bytearray:
        at = self.f.tell()
        if n > self.size - at:
            raise self.fail(f"is truncated: {what} needs {n} bytes at offset {at}, the file has {self.size}")
        buffer = bytearray(n)
        if self.f.readinto(buffer) != n:
            raise self.fail(f"is truncated: short read of {what} at offset {at}")
        return buffer

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.bytes(struct.calcsize(fmt), what))


def read_ndarray_list(path: str | Path) -> tuple[list[np.ndarray | None], list[str]]:
    """The arrays (None for a "none" array) and the names (empty, or one per array) of an MXNet list file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MXNetParamsError(f"MXNet params file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        if size < 16:
            raise r.fail(f"is not an MXNet params file ({size} bytes; a list starts with a 16-byte header)")
        magic, _reserved = r.unpack("<QQ", "the header")
        if magic != LIST_MAGIC:
            raise r.fail(
                f"is not an MXNet params file (header {magic:#x}, expected {LIST_MAGIC:#x}: an NDArray list "
                "saved by mx.nd.save or a checkpoint)"
            )
        (count,) = r.unpack("<Q", "the array count")
        if count > size:  # every array takes bytes
            raise r.fail(f"is corrupt: it claims {count} arrays in {size} bytes")
        arrays = [_read_ndarray(r, i) for i in range(count)]
        (n_names,) = r.unpack("<Q", "the name count")
        if n_names not in (0, count):
            raise r.fail(f"is corrupt: {count} arrays but {n_names} names")
        names = []
        for i in range(n_names):
            (length,) = r.unpack("<Q", f"the length of name {i}")
            if length > _MAX_NAME:
                raise r.fail(f"is corrupt: name {i} claims {length} bytes")
            raw = r.bytes(length, f"name {i}")
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise r.fail(f"is corrupt: name {i} is not text") from None
    return arrays, names


def load_params(path: str | Path) -> dict[str, np.ndarray | None]:
    """An MXNet list file as ``{name: array}`` (names as stored, ``arg:`` / ``aux:`` prefixes kept)."""
    arrays, names = read_ndarray_list(path)
    if arrays and not names:
        raise MXNetParamsError(f"{Path(path).expanduser()} holds {len(arrays)} unnamed arrays, not named parameters")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise MXNetParamsError(f"{Path(path).expanduser()} is corrupt: repeated names e.g. {repeated[:3]}")
    return dict(zip(names, arrays, strict=True))


def _read_ndarray(r: _Reader, index: int) -> np.ndarray | None:
    what = f"array {index}"
    (magic,) = r.unpack("<I", f"{what}'s header")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.unpack("<i", f"{what}'s storage type")
        if stype != 0:
            kind = _STYPE_NAMES.get(stype, f"storage type {stype}")
            raise r.fail(f"holds a {kind} array ({what}); only dense arrays are supported")
        (ndim,) = r.unpack("<i", f"{what}'s shape")
        if ndim == -1:  # MXNet 2's unknown shape: a "none" array
            return None
        if magic == V3_MAGIC:  # numpy semantics: ndim 0 is a scalar; an unknown dim (-1) makes a "none" array
            shape = _dims(r, ndim, "<q", what, unknown_ok=True)
            if any(d < 0 for d in shape):
                return None
        else:
            shape = _dims(r, ndim, "<q", what) if ndim else None
    elif magic == V1_MAGIC:
        (ndim,) = r.unpack("<I", f"{what}'s shape")
        shape = _dims(r, ndim, "<q", what) if ndim else None
    else:  # before MXNet 0.11: no magic; this uint32 is the shape's ndim, and the dims are uint32
        if magic > _MAX_NDIM:
            raise r.fail(f"is corrupt or not an MXNet params file: {what} starts with {magic:#x}")
        shape = _dims(r, magic, "<I", what) if magic else None
    if shape is None:  # a "none" array: nothing follows its shape
        return None
    _dev_type, _dev_id, flag = r.unpack("<iii", f"{what}'s context and dtype")
    if flag not in DTYPES:
        name = _DTYPE_NAMES.get(flag, f"dtype flag {flag}")
        supported = ", ".join(str(d) for d in DTYPES.values())
        raise r.fail(f"holds a {name} array ({what}); supported dtypes: {supported}")
    dtype = DTYPES[flag]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = r.bytes(nbytes, f"{what}'s data ({'x'.join(map(str, shape)) or 'scalar'} {dtype})")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)  # writable: it views the bytearray
    return array.astype(dtype.newbyteorder("="), copy=False)


def _dims(r: _Reader, ndim: int, fmt: str, what: str, unknown_ok: bool = False) -> tuple[int, ...]:
    if not 0 <= ndim <= _MAX_NDIM:
        raise r.fail(f"is corrupt: {what} claims {ndim} dimensions")
    dims = r.unpack(f"<{ndim}{fmt[-1]}", f"{what}'s shape")
    if any(d < (-1 if unknown_ok else 0) for d in dims):
        raise r.fail(f"is corrupt or has an unknown shape: {what} has shape {dims}")
    return tuple(int(d) for d in dims)
