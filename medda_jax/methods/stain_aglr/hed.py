"""Colour deconvolution into haematoxylin-eosin-DAB (HED) optical density and the HED-light
stain augmentation, in `jax.numpy` (inside the jitted step, vmapped over the batch) with a
NumPy twin of the same function (for a grain pipeline or a host-side figure).

`rgb_to_hed` / `hed_to_rgb` follow scikit-image's `rgb2hed` / `hed2rgb` (Ruifrok-Johnston
matrices, the 1e-6 floor before the log, the same log scaling). The augmentation takes its
random numbers as an argument (`JitterDraw`), so the jnp and NumPy versions compute the same
image from the same draw and a test can hold one to the other:

  HED jitter         s' = s * (1 + sigma) + bias, per stain channel     (Tellez et al. 2019)
  brightness         x + brightness
  contrast           (x - mean) * contrast + mean, mean over the patch
  additive noise     x + noise_scale * n, n ~ N(0, 1) per pixel
each followed by a clip to [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

HED_FROM_RGB = np.asarray(hed_from_rgb, np.float32)
RGB_FROM_HED = np.asarray(rgb_from_hed, np.float32)
_LOG_FLOOR = float(np.log(1e-6))  # scikit-image's log_adjust


def rgb_to_hed(rgb: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> HED stain densities (non-negative), as skimage.rgb2hed."""
  od = jnp.log(jnp.maximum(rgb, 1e-6)) / _LOG_FLOOR
  return jnp.maximum(od @ HED_FROM_RGB, 0.0)


def hed_to_rgb(hed: jax.Array) -> jax.Array:
  """HED stain densities [..., 3] -> RGB in [0, 1], as skimage.hed2rgb."""
  return jnp.clip(jnp.exp((hed * _LOG_FLOOR) @ RGB_FROM_HED), 0.0, 1.0)


def rgb_to_hed_np(rgb: np.ndarray) -> np.ndarray:
  od = np.log(np.maximum(rgb, 1e-6)) / _LOG_FLOOR
  return np.maximum(od @ HED_FROM_RGB, 0.0)


def hed_to_rgb_np(hed: np.ndarray) -> np.ndarray:
  return np.clip(np.exp((hed * _LOG_FLOOR) @ RGB_FROM_HED), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class JitterRanges:
  """Half-widths of the uniform draws (0 switches a part off) and the noise's largest
  standard deviation."""
  sigma: float = 0.05       # HED scale: 1 + U(-sigma, sigma) per stain channel
  bias: float = 0.05        # HED shift: U(-bias, bias) per stain channel
  brightness: float = 0.0   # U(-brightness, brightness) added to every channel
  contrast: float = 0.0     # factor 1 + U(-contrast, contrast) about the patch mean
  noise: float = 0.0        # noise std U(0, noise) per patch

  @classmethod
  def of(cls, c) -> "JitterRanges":
    return cls(sigma=c.sigma, bias=c.bias, brightness=c.brightness, contrast=c.contrast,
               noise=c.noise)


class JitterDraw(NamedTuple):
  """The random numbers of one patch's augmentation (leading batch axis when batched)."""
  sigma: jax.Array       # [3]
  bias: jax.Array        # [3]
  brightness: jax.Array  # []
  contrast: jax.Array    # []  (the factor minus 1)
  noise: jax.Array       # [H, W, 3]  standard normal, scaled by noise_scale
  noise_scale: jax.Array  # []


def draw(key: jax.Array, shape: tuple[int, int, int], r: JitterRanges) -> JitterDraw:
  """One patch's draw (vmap over keys for a batch)."""
  k = jax.random.split(key, 6)
  u = lambda key, s, half: jax.random.uniform(key, s, minval=-half, maxval=half)
  return JitterDraw(u(k[0], (3,), r.sigma), u(k[1], (3,), r.bias), u(k[2], (), r.brightness),
                    u(k[3], (), r.contrast), jax.random.normal(k[4], shape),
                    jax.random.uniform(k[5], (), maxval=r.noise))


def zero_draw(shape: tuple[int, int, int]) -> JitterDraw:
  """The draw that changes nothing (up to the round trip through HED)."""
  z3 = jnp.zeros(3)
  return JitterDraw(z3, z3, jnp.zeros(()), jnp.zeros(()), jnp.zeros(shape), jnp.zeros(()))


def apply(rgb: jax.Array, d: JitterDraw) -> jax.Array:
  """HED-light colour augmentation of one patch [H, W, 3] in [0, 1] (vmap for a batch)."""
  hed = rgb_to_hed(rgb) * (1.0 + d.sigma) + d.bias
  x = hed_to_rgb(hed)
  x = jnp.clip(x + d.brightness, 0.0, 1.0)
  mean = jnp.mean(x)
  x = jnp.clip((x - mean) * (1.0 + d.contrast) + mean, 0.0, 1.0)
  return jnp.clip(x + d.noise_scale * d.noise, 0.0, 1.0)


def apply_np(rgb: np.ndarray, d) -> np.ndarray:
  """The NumPy twin of `apply` (same draw -> same image)."""
  d = JitterDraw(*(np.asarray(v, np.float32) for v in d))
  hed = rgb_to_hed_np(rgb.astype(np.float32)) * (1.0 + d.sigma) + d.bias
  x = hed_to_rgb_np(hed)
  x = np.clip(x + d.brightness, 0.0, 1.0)
  mean = x.mean()
  x = np.clip((x - mean) * (1.0 + d.contrast) + mean, 0.0, 1.0)
  return np.clip(x + d.noise_scale * d.noise, 0.0, 1.0).astype(np.float32)


def jitter_batch(key: jax.Array, images: jax.Array, r: JitterRanges) -> jax.Array:
  """Each patch of [B, H, W, 3] with its own draw, vmapped (inside the jitted step)."""
  draws = jax.vmap(lambda k: draw(k, images.shape[1:], r))(jax.random.split(key, len(images)))
  return jax.vmap(apply)(images, draws)


def draw_np(rng: np.random.Generator, shape, r: JitterRanges) -> JitterDraw:
  """A NumPy draw of the same distribution (the grain pipeline's)."""
  u = lambda s, half: rng.uniform(-half, half, s).astype(np.float32)
  return JitterDraw(u(3, r.sigma), u(3, r.bias), u((), r.brightness), u((), r.contrast),
                    rng.standard_normal(shape).astype(np.float32),
                    np.float32(rng.uniform(0, r.noise) if r.noise else 0.0))
