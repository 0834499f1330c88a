"""Reading and writing IDX files, the format of MNIST and its look-alikes.

An IDX file is a 4-byte magic number, the dimensions as big-endian uint32 and
the data, row-major and big-endian::

  0x00 0x00 <type code> <ndim>  dim_0 ... dim_{ndim-1}  data

The files may be gzip-compressed (as distributed); :func:`read_idx` detects the
compression from the gzip magic bytes, not from the file name. Every problem
with a file (bad header, truncated or oversized payload, damaged gzip stream)
raises :class:`CorruptDataError` naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["IDX_DTYPES", "CorruptDataError", "read_idx", "write_idx"]

#: IDX type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_FOR_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class CorruptDataError(ValueError):
  """A data file exists but its content is not valid (bad header, wrong size, ...)."""


def _read_bytes(path: str | os.PathLike) -> bytes:
  """The file's bytes, decompressed if they start with the gzip magic."""
  with open(path, "rb") as f:
    raw = f.read()
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
    raise CorruptDataError(
        f"{os.fspath(path)}: damaged gzip stream ({type(e).__name__}: {e}); "
        "the file is probably truncated or corrupted, download it again.") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzip-compressed or raw) into a native-endian array.

  Args:
    path: the file. Compression is detected from the content.

  Returns:
    A writeable array of the file's shape, with the native-endian dtype of its
    type code (uint8, int8, int16, int32, float32 or float64).

  Raises:
    FileNotFoundError: the file does not exist.
    CorruptDataError: the file is not a valid IDX file; the message names the
      file and the problem (bad magic, unknown type code, truncated or trailing
      payload, damaged gzip stream).

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sphereembed.data import read_idx, write_idx
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, "x-idx2-ubyte.gz")
    ...   write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    ...   x = read_idx(path)
    >>> print(f"{x.dtype} {x.shape} {x.sum()}")
    uint8 (2, 3) 15
  """
  name = os.fspath(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise CorruptDataError(f"{name}: not an IDX file: only {len(data)} bytes, the header needs 4.")
  if data[0] != 0 or data[1] != 0:
    raise CorruptDataError(
        f"{name}: not an IDX file: bad magic {data[:4].hex()} (the first two bytes must be 0).")
  code, ndim = data[2], data[3]
  if code not in IDX_DTYPES:
    known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
    raise CorruptDataError(f"{name}: unknown IDX type code 0x{code:02X} (expected one of {known}).")
  if ndim == 0:
    raise CorruptDataError(f"{name}: IDX header declares 0 dimensions.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise CorruptDataError(
        f"{name}: truncated header: {ndim} dimensions need {header} bytes, found {len(data)}.")
  shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
  dtype = IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found = len(data) - header
  if found < expected:
    raise CorruptDataError(
        f"{name}: truncated: expected {expected} bytes of data for shape {shape} "
        f"({dtype.newbyteorder('=').name}), found {found}.")
  if found > expected:
    raise CorruptDataError(
        f"{name}: {found - expected} trailing bytes: expected {expected} bytes of data "
        f"for shape {shape} ({dtype.newbyteorder('=').name}), found {found}.")
  array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
  # astype copies: the result is writeable, native-endian and owns its memory.
  return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def write_idx(path: str | os.PathLike, array) -> None:
  """Writes ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``.

  The gzip header carries no time stamp and no file name, so equal arrays give
  byte-identical files.

  Args:
    path: the destination file (overwritten).
    array: array-like of at least one dimension whose dtype is one of uint8,
      int8, int16, int32, float32 or float64 (any byte order).

  Raises:
    ValueError: unsupported dtype, a 0-dimensional array, more than 255
      dimensions or a dimension of 2**32 or more.
  """
  array = np.asarray(array)
  code = _CODE_FOR_KIND.get((array.dtype.kind, array.dtype.itemsize))
  if code is None:
    raise ValueError(
        f"IDX files hold uint8, int8, int16, int32, float32 or float64, got {array.dtype}.")
  if not 1 <= array.ndim <= 255:
    raise ValueError(f"IDX arrays need 1 to 255 dimensions, got shape {array.shape}.")
  if any(d >= 2**32 for d in array.shape):
    raise ValueError(f"IDX dimensions must be below 2**32, got shape {array.shape}.")
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
  payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
  with open(path, "wb") as f:
    if os.fspath(path).endswith(".gz"):
      with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=6, mtime=0) as gz:
        gz.write(header)
        gz.write(payload)
    else:
      f.write(header)
      f.write(payload)
