"""IDX reading and writing, on generated files and on the real MNIST folders."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from sphereembed.data import CorruptDataError, DataNotFoundError, load_dataset, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]

# Class counts published in ../shared/data/README.md.
MNIST10K_TRAIN_COUNTS = [801, 902, 793, 826, 784, 690, 811, 856, 755, 782]
MNIST10K_TEST_COUNTS = [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _example(dtype, shape=(3, 4, 5)) -> np.ndarray:
  rng = np.random.default_rng(0)
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    x.flat[0], x.flat[1] = info.min, info.max  # Byte order matters at the extremes.
    return x
  x = rng.standard_normal(shape).astype(dtype)
  x.flat[0] = np.finfo(dtype).max
  return x


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(tmp_path, dtype, compressed):
  x = _example(dtype)
  path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
  write_idx(path, x)
  with open(path, "rb") as f:
    assert (f.read(2) == b"\x1f\x8b") == compressed
  y = read_idx(path)
  assert y.dtype == np.dtype(dtype) and y.dtype.isnative
  assert y.shape == x.shape
  np.testing.assert_array_equal(y, x)
  assert y.flags.writeable


@pytest.mark.parametrize("shape", [(7,), (2, 3), (1, 2, 3, 4), (0, 28, 28)])
def test_round_trip_shapes(tmp_path, shape):
  x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
  write_idx(tmp_path / "x.gz", x)
  y = read_idx(tmp_path / "x.gz")
  assert y.shape == shape
  np.testing.assert_array_equal(y, x)


def test_header_layout_is_canonical(tmp_path):
  write_idx(tmp_path / "x", np.zeros((2, 3), dtype=np.int16))
  data = (tmp_path / "x").read_bytes()
  assert data[:4] == bytes([0, 0, 0x0B, 2])
  assert data[4:12] == bytes([0, 0, 0, 2, 0, 0, 0, 3])
  assert len(data) == 12 + 2 * 3 * 2


def test_big_endian_payload(tmp_path):
  write_idx(tmp_path / "x", np.array([1, 256], dtype="<i4"))  # Any input byte order.
  assert (tmp_path / "x").read_bytes()[8:] == bytes([0, 0, 0, 1, 0, 0, 1, 0])
  np.testing.assert_array_equal(read_idx(tmp_path / "x"), [1, 256])


def test_compression_detected_from_content_not_name(tmp_path):
  x = _example(np.uint8)
  write_idx(tmp_path / "a.gz", x)
  os.rename(tmp_path / "a.gz", tmp_path / "compressed-without-suffix")
  write_idx(tmp_path / "b", x)
  os.rename(tmp_path / "b", tmp_path / "raw-with-suffix.gz")
  np.testing.assert_array_equal(read_idx(tmp_path / "compressed-without-suffix"), x)
  np.testing.assert_array_equal(read_idx(tmp_path / "raw-with-suffix.gz"), x)


def test_gzip_output_is_deterministic(tmp_path):
  x = _example(np.float32)
  write_idx(tmp_path / "a.gz", x)
  write_idx(tmp_path / "b.gz", x)
  assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def _raw_file(tmp_path, name="x-idx3-ubyte") -> tuple[str, bytes]:
  path = tmp_path / name
  write_idx(path, np.arange(2 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(2, 28, 28))
  return str(path), path.read_bytes()


def _expect_corrupt(path, *fragments):
  with pytest.raises(CorruptDataError) as info:
    read_idx(path)
  message = str(info.value)
  assert str(path) in message
  for fragment in fragments:
    assert fragment in message, message
  assert isinstance(info.value, ValueError)


def test_truncated_payload(tmp_path):
  path, data = _raw_file(tmp_path)
  with open(path, "wb") as f:
    f.write(data[:-5])
  _expect_corrupt(path, f"truncated: expected {2 * 28 * 28} bytes", f"found {2 * 28 * 28 - 5}")


def test_trailing_bytes(tmp_path):
  path, data = _raw_file(tmp_path)
  with open(path, "wb") as f:
    f.write(data + b"\0\0\0")
  _expect_corrupt(path, "3 trailing bytes", f"expected {2 * 28 * 28} bytes")


def test_bad_magic(tmp_path):
  path, data = _raw_file(tmp_path)
  with open(path, "wb") as f:
    f.write(b"\x01" + data[1:])
  _expect_corrupt(path, "bad magic")


def test_bad_type_code(tmp_path):
  path, data = _raw_file(tmp_path)
  with open(path, "wb") as f:
    f.write(data[:2] + b"\x0a" + data[3:])
  _expect_corrupt(path, "unknown IDX type code 0x0A")


@pytest.mark.parametrize("size", [0, 3, 9])
def test_truncated_header(tmp_path, size):
  path, data = _raw_file(tmp_path)
  with open(path, "wb") as f:
    f.write(data[:size])
  _expect_corrupt(path)


def test_zero_dimensions(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(bytes([0, 0, 8, 0]))
  _expect_corrupt(path, "0 dimensions")


def test_truncated_gzip(tmp_path):
  _, data = _raw_file(tmp_path)
  compressed = gzip.compress(data)
  path = tmp_path / "x.gz"
  path.write_bytes(compressed[:len(compressed) // 2])
  _expect_corrupt(path, "gzip")


def test_gzip_crc_mismatch(tmp_path):
  _, data = _raw_file(tmp_path)
  compressed = bytearray(gzip.compress(data))
  compressed[-8] ^= 0xFF  # The stored CRC32.
  path = tmp_path / "x.gz"
  path.write_bytes(bytes(compressed))
  _expect_corrupt(path, "gzip")


def test_gzip_wrapping_a_truncated_payload(tmp_path):
  _, data = _raw_file(tmp_path)
  path = tmp_path / "x.gz"
  path.write_bytes(gzip.compress(data[:-1]))
  _expect_corrupt(path, "truncated")


def test_missing_file_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    read_idx(tmp_path / "absent.gz")


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.zeros(3, bool), np.zeros(3, np.float16),
                                 np.array(5, np.uint8)])
def test_write_rejects_unsupported_arrays(tmp_path, bad):
  with pytest.raises(ValueError):
    write_idx(tmp_path / "x", bad)


# ----------------------------------------------------------------------------- real data


def _load_or_skip(name: str):
  """The dataset through `load_dataset`'s resolution; a skip only where data is optional."""
  try:
    return load_dataset(name)
  except DataNotFoundError:
    if os.environ.get("SPHEREEMBED_REQUIRE_DATA") == "1":
      raise
    pytest.skip(f"{name} not available (set SPHEREEMBED_REQUIRE_DATA=1 to make this a failure)")


def test_real_mnist10k_class_counts():
  dataset = _load_or_skip("mnist10k")
  assert np.bincount(dataset.train.labels, minlength=10).tolist() == MNIST10K_TRAIN_COUNTS
  assert np.bincount(dataset.test.labels, minlength=10).tolist() == MNIST10K_TEST_COUNTS
  assert dataset.train.images.shape == (8000, 28, 28, 1)
  assert dataset.test.images.shape == (2000, 28, 28, 1)


def test_real_mnist_sizes_and_dtypes():
  dataset = _load_or_skip("mnist")
  assert len(dataset.train) == 60000 and len(dataset.test) == 10000
  assert dataset.train.images.shape == (60000, 28, 28, 1)
  assert dataset.test.images.shape == (10000, 28, 28, 1)
  assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
  assert np.bincount(dataset.train.labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
  assert np.bincount(dataset.test.labels, minlength=10).tolist() == MNIST_TEST_COUNTS
  # Real digits: a black background and saturated strokes.
  assert dataset.train.images.max() == 255 and np.median(dataset.train.images) == 0
  assert dataset.num_classes == 10 and dataset.name == "mnist"


def test_write_idx_reproduces_real_file_bytes(tmp_path):
  """Our writer produces the canonical uncompressed bytes of a real MNIST file."""
  dataset = _load_or_skip("mnist10k")
  real = os.path.join(dataset.source, "t10k-labels-idx1-ubyte.gz")
  with gzip.open(real, "rb") as f:
    canonical = f.read()
  write_idx(tmp_path / "labels", dataset.test.labels.astype(np.uint8))
  assert (tmp_path / "labels").read_bytes() == canonical
