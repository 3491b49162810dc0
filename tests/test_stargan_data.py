"""StarGAN's data: the paper's digit setting on the published files (the demo digits only
in the demo, and only the demo labelled DEMO DATA), and the chest X-ray classifiers'
flip / rotation / translation augmentation against a hand-written resampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medda_jax.config_utils import load_config
from medda_jax.data import digits as digits_data
from medda_jax.errors import ConfigError
from medda_jax.methods import stargan_da
from medda_jax.methods.stargan_da.augment import AffineAugment
from test_digits import write_mnist, write_mnist_m


# --------------------------------------------------------------------------- augmentation
def _bilinear_reference(image, flip, angle, dy, dx, fill):
  """Output pixel (i, j) reads the (flipped) input at R⁻¹((i, j) − c − t) + c, bilinear,
  `fill` outside; written pixel by pixel."""
  if flip:
    image = image[:, ::-1]
  h, w, channels = image.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  out = np.empty_like(image)
  for i in range(h):
    for j in range(w):
      y, x = i - cy - dy, j - cx - dx
      sy = math.cos(angle) * y + math.sin(angle) * x + cy
      sx = -math.sin(angle) * y + math.cos(angle) * x + cx
      y0, x0 = math.floor(sy), math.floor(sx)
      for ch in range(channels):
        total = 0.0
        for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
          for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
            inside = 0 <= yy < h and 0 <= xx < w
            total += wy * wx * (image[yy, xx, ch] if inside else fill)
        out[i, j, ch] = total
  return out


def test_affine_matches_a_pixel_by_pixel_resampling():
  image = np.random.default_rng(0).uniform(-1, 1, (9, 7, 2)).astype(np.float32)
  aug = AffineAugment()
  for params in [(True, 0.3, 1.3, -0.7), (False, -0.15, -2.0, 0.4), (False, 0.0, 0.0, 0.0)]:
    got = aug.apply(image, *params)
    np.testing.assert_allclose(got, _bilinear_reference(image, *params, fill=-1.0),
                               atol=1e-5)
  np.testing.assert_array_equal(aug.apply(image, True, 0.0, 0.0, 0.0), image[:, ::-1])


def test_every_image_draws_its_own_transform_from_its_position():
  images = np.random.default_rng(1).uniform(-1, 1, (2, 3, 10, 10, 3)).astype(np.float32)
  aug = AffineAugment(flip_prob=0.5, rotation_deg=10, translate_frac=0.1)
  out = aug(images, np.random.default_rng((7, 4)))
  again = aug(images, np.random.default_rng((7, 4)))
  np.testing.assert_array_equal(out, again)  # a resumed run redraws the same batch
  children = np.random.default_rng((7, 4)).spawn(6)
  flat = images.reshape(6, 10, 10, 3)
  drawn = [aug.draw(child, 10, 10) for child in children]
  for k in range(6):
    np.testing.assert_array_equal(out.reshape(6, 10, 10, 3)[k], aug.apply(flat[k], *drawn[k]))
  assert all(abs(a) <= math.radians(10) and abs(dy) <= 1 and abs(dx) <= 1
             for _, a, dy, dx in drawn)
  assert len({round(a, 9) for _, a, _, _ in drawn}) == 6  # not one transform for the batch


def test_zero_magnitudes_leave_images_unchanged():
  images = np.random.default_rng(2).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  same = AffineAugment(0.0, 0.0, 0.0)(images, np.random.default_rng(0))
  np.testing.assert_allclose(same, images, atol=1e-6)


def test_augmentation_is_on_for_the_chest_xray_setting_only():
  cxr = load_config("configs/stargan.py:cxr").classifier.augment
  assert cxr.enabled and AffineAugment.of(cxr) == AffineAugment(0.5, 10.0, 0.1)
  assert AffineAugment.of(load_config("configs/stargan.py:digits").classifier.augment) is None
  c = load_config("configs/stargan.py:cxr_smoke")
  c.data.dirs.nih, c.data.dirs.chexpert = "/data/nih", "/data/chexpert"
  c.classifier.augment.rotation_deg = 270.0
  with pytest.raises(ConfigError, match="classifier.augment.rotation_deg"):
    stargan_da.validate(c)


# --------------------------------------------------------------------------- digit data
def test_the_paper_setting_needs_the_published_files():
  c = load_config("configs/stargan.py:digits")
  c.data.dirs.usps = "/data/usps"
  with pytest.raises(ConfigError, match=r"config.data.dirs.mnist must name the folder of "
                                        r"MNIST's IDX files"):
    stargan_da.validate(c)
  c.data.dirs.mnist = "/data/mnist"
  with pytest.raises(ConfigError, match=r"config.data.dirs.mnist_m must name the folder of MNIST-M \(mnist_m/"):
    stargan_da.validate(c)
  c.data.dirs.mnist_m = "/data/mnist_m"
  stargan_da.validate(c)
  assert "DEMO" not in stargan_da.experiment.data_label(c, list(c.data.domains), [])


def test_only_embedded_digits_carry_the_demo_label():
  demo = load_config("configs/stargan.py:digits_demo")
  label = stargan_da.experiment.data_label(demo, list(demo.data.domains), [])
  assert label.startswith("DEMO DATA") and "reduced schedule" in label
  # The paper's domains with the embedded MNIST / MNIST-M (allowed on request) are demo data.
  c = load_config("configs/stargan.py:digits")
  c.data.embedded_digits, c.data.dirs.usps = True, "/data/usps"
  stargan_da.validate(c)
  label = stargan_da.experiment.data_label(c, list(c.data.domains), [])
  assert label.startswith("DEMO DATA") and "['mnist', 'mnist_m']" in label
  assert "reduced schedule" not in label  # the paper's 200K iterations


def write_usps(root, n_train=12, n_test=8, seed=0):
  """USPS in the ESL layout (zip.train / zip.test: `digit v1 ... v256`, values in [-1, 1]);
  returns the uint8 images round((v + 1) / 2 * 255) and the labels, train then test."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  images, labels = [], []
  for name, n in (("zip.train", n_train), ("zip.test", n_test)):
    pixels = rng.integers(0, 256, (n, 16, 16))
    digits = rng.integers(0, 10, n)
    lines = [f"{d}.0000 " + " ".join(f"{p / 255 * 2 - 1:.6f}" for p in image.ravel())
             for d, image in zip(digits, pixels)]
    (root / name).write_text("\n".join(lines) + "\n")
    images.append(pixels.astype(np.uint8))
    labels.append(digits)
  return np.concatenate(images), np.concatenate(labels)


def _published_config(tmp_path):
  """The smoke schedule on the published-file path: MNIST, MNIST-M and USPS fixtures in
  their publishers' layouts (20 images each), every image kept."""
  write_mnist(tmp_path / "mnist", n_train=14, n_test=6)
  write_mnist_m(tmp_path / "mnist_m_files", n_train=12, n_test=8)
  usps = write_usps(tmp_path / "usps")
  c = load_config("configs/stargan.py:smoke")
  c.data.domains = ("mnist", "mnist_m", "usps")
  c.data.embedded_digits = False
  c.data.max_per_domain = 0
  c.data.dirs.mnist, c.data.dirs.mnist_m = str(tmp_path / "mnist"), str(tmp_path / "mnist_m_files")
  c.data.dirs.usps = str(tmp_path / "usps")
  return c, usps


def _old_published_images(raw: np.ndarray, size: int) -> np.ndarray:
  """The published path as it was, whole domain in memory and written plainly: uint8 / 255,
  nearest-neighbour resize (output pixel i reads floor((i + 0.5) s / size)), grey
  replicated to 3 channels, then [0, 1] -> [-1, 1]."""
  side = raw.shape[1]
  rows = [int((i + 0.5) * side / size) for i in range(size)]
  images = raw.astype(np.float32) / 255
  images = images[..., None] if images.ndim == 3 else images
  images = np.repeat(images[:, rows][:, :, rows], 3 // images.shape[-1], axis=-1)
  return (images - 0.5) / 0.5


def test_published_digit_domains_keep_every_image_and_decode_per_batch(tmp_path):
  from medda_jax.data.images import LazyImages
  c, (usps_raw, usps_labels) = _published_config(tmp_path)
  stargan_da.validate(c)
  domains = stargan_da.load_domains(c)
  raw = {"mnist": digits_data.load_mnist_idx(tmp_path / "mnist")[0],
         "mnist_m": digits_data.load_mnist_m_folder(tmp_path / "mnist_m_files")[0],
         "usps": usps_raw}
  for name, d in domains.items():
    assert len(d.train) + len(d.val) + len(d.test) == 20, name
    want = _old_published_images(raw[name], c.data.size)
    labels = np.concatenate([d.train.labels, d.val.labels, d.test.labels])
    positions = np.concatenate([s.images.indices for s in (d.train, d.val, d.test)])
    assert sorted(positions.tolist()) == list(range(20)), name  # every image, once
    for part in (d.train, d.val, d.test):
      assert isinstance(part.images, LazyImages), name  # nothing decoded up front
      assert part.images.shape[1:] == (16, 16, 3)
      batch = np.array([[0, len(part) - 1], [len(part) // 2, 0]])
      np.testing.assert_array_equal(part.images[batch], want[part.images.indices[batch]])
    if name == "usps":
      np.testing.assert_array_equal(labels, usps_labels[positions])
  assert "DEMO" not in stargan_da.experiment.data_label(c, list(domains), [])


def test_the_published_digit_path_runs_end_to_end(tmp_path, stargan_run):
  """The `:digits` path (published files, lazy domains: baselines, one StarGAN pair with its
  translations spilled and read back, the grids and the domain spread) on the fixtures,
  at the smoke schedule, through the command line. It reads the shared smoke run (the same
  networks on the embedded demo digits): after it, on the same two devices, the compiled
  functions come from the session's cache, and only that run is labelled DEMO DATA."""
  from conftest import TWO_DEVICES, run_train
  c, _ = _published_config(tmp_path)
  proc = run_train(tmp_path / "run", "--config.data.domains=('mnist','mnist_m','usps')",
                   "--config.data.embedded_digits=False", "--config.data.max_per_domain=0",
                   f"--config.data.dirs.mnist={c.data.dirs.mnist}",
                   f"--config.data.dirs.mnist_m={c.data.dirs.mnist_m}",
                   f"--config.data.dirs.usps={c.data.dirs.usps}",
                   "--config.pairs=('mnist_m->usps',)", "--config.eval.spread_fractions=(0.5,)",
                   config="configs/stargan.py:smoke", env=TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert list(results["pairs"]) == ["mnist_m->usps"] and "DEMO" not in results["label"]
  assert "published files" in results["label"]
  assert set(results["internal"]) == {"mnist", "mnist_m", "usps"}
  assert [row["fraction"] for row in results["spread"]] == [0.5]
  assert (tmp_path / "run" / "translations_mnist_m_to_usps.png").exists()
  assert not list((tmp_path / "run" / "scratch").glob("*.npy"))  # spilled sets removed
  demo = json.loads((stargan_run[0] / "results.json").read_text())
  assert demo["label"].startswith("DEMO DATA") and demo["data"] != results["data"]
