"""StarGAN's data: the paper's digit setting on the published files (the demo digits only
in the demo, and only the demo labelled DEMO DATA), and the chest X-ray classifiers'
flip / rotation / translation augmentation against a hand-written resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medda_jax.config_utils import load_config
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


def test_published_digit_domains_keep_every_image(tmp_path):
  write_mnist(tmp_path / "mnist", n_train=14, n_test=6)
  write_mnist_m(tmp_path / "mnist_m_files", n_train=12, n_test=8)
  c = load_config("configs/stargan.py:smoke")
  c.data.domains = ("mnist", "mnist_m")
  c.data.embedded_digits = False
  c.data.max_per_domain = 0
  c.data.dirs.mnist, c.data.dirs.mnist_m = str(tmp_path / "mnist"), str(tmp_path / "mnist_m_files")
  stargan_da.validate(c)
  domains = stargan_da.load_domains(c)
  for name, d in domains.items():
    assert len(d.train) + len(d.val) + len(d.test) == 20, name
    assert d.train.images.shape[1:] == (16, 16, 3)
    assert -1.0 <= d.train.images.min() and d.train.images.max() <= 1.0
  assert "DEMO" not in stargan_da.experiment.data_label(c, list(domains), [])
