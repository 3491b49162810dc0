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
  Gaussian blur      separable, standard deviation `blur` pixels (symmetric edges, radius
                     fixed by the largest draw as scipy.ndimage.gaussian_filter's)
  additive noise     x + noise_scale * n, n ~ N(0, 1) per pixel
each followed by a clip to [0, 1]. These change colours and sharpness only: x_hat keeps
x's geometry, which L_Reg (regenerate x from x_hat) needs. HED-light's geometric part
(scaling, elastic deformation) is `morphology_np`, applied on the host before the twin is
made, so that x and x_hat share it.
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
  blur: float = 0.0         # Gaussian blur std U(0, blur) pixels per patch

  @classmethod
  def of(cls, c) -> "JitterRanges":
    return cls(sigma=c.sigma, bias=c.bias, brightness=c.brightness, contrast=c.contrast,
               noise=c.noise, blur=c.blur)

  @property
  def blur_radius(self) -> int:
    """Taps each side of the blur kernel: scipy.ndimage.gaussian_filter's for the largest
    draw (truncate = 4)."""
    return int(4.0 * self.blur + 0.5)


class JitterDraw(NamedTuple):
  """The random numbers of one patch's augmentation (leading batch axis when batched)."""
  sigma: jax.Array       # [3]
  bias: jax.Array        # [3]
  brightness: jax.Array  # []
  contrast: jax.Array    # []  (the factor minus 1)
  noise: jax.Array       # [H, W, 3]  standard normal, scaled by noise_scale
  noise_scale: jax.Array  # []
  blur: jax.Array = 0.0   # []  Gaussian blur std in pixels


def draw(key: jax.Array, shape: tuple[int, int, int], r: JitterRanges) -> JitterDraw:
  """One patch's draw (vmap over keys for a batch)."""
  k = jax.random.split(key, 7)
  u = lambda key, s, half: jax.random.uniform(key, s, minval=-half, maxval=half)
  return JitterDraw(u(k[0], (3,), r.sigma), u(k[1], (3,), r.bias), u(k[2], (), r.brightness),
                    u(k[3], (), r.contrast), jax.random.normal(k[4], shape),
                    jax.random.uniform(k[5], (), maxval=r.noise),
                    jax.random.uniform(k[6], (), maxval=r.blur))


def zero_draw(shape: tuple[int, int, int]) -> JitterDraw:
  """The draw that changes nothing (up to the round trip through HED)."""
  z3 = jnp.zeros(3)
  return JitterDraw(z3, z3, jnp.zeros(()), jnp.zeros(()), jnp.zeros(shape), jnp.zeros(()),
                    jnp.zeros(()))


def _blur_taps(xp, sigma, radius: int):
  """Normalised Gaussian weights at offsets -radius..radius (a unit impulse for sigma 0)."""
  t = xp.arange(-radius, radius + 1, dtype=xp.float32)
  w = xp.exp(-0.5 * t ** 2 / xp.maximum(sigma, 1e-6) ** 2)
  return w / w.sum()


def _blur(xp, x, sigma, radius: int):
  """Separable Gaussian blur of [H, W, C] with symmetric padding (scipy's 'reflect')."""
  if radius == 0:
    return x
  w = _blur_taps(xp, sigma, radius)
  for axis in (0, 1):
    pad = [(0, 0)] * 3
    pad[axis] = (radius, radius)
    padded = xp.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    x = sum(w[i] * xp.take(padded, xp.arange(i, i + n), axis=axis)
            for i in range(2 * radius + 1))
  return x


def apply(rgb: jax.Array, d: JitterDraw, blur_radius: int = 0) -> jax.Array:
  """HED-light colour augmentation of one patch [H, W, 3] in [0, 1] (vmap for a batch);
  `blur_radius` (static) = JitterRanges.blur_radius, 0 = no blur."""
  hed = rgb_to_hed(rgb) * (1.0 + d.sigma) + d.bias
  x = hed_to_rgb(hed)
  x = jnp.clip(x + d.brightness, 0.0, 1.0)
  mean = jnp.mean(x)
  x = jnp.clip((x - mean) * (1.0 + d.contrast) + mean, 0.0, 1.0)
  x = _blur(jnp, x, d.blur, blur_radius)
  return jnp.clip(x + d.noise_scale * d.noise, 0.0, 1.0)


def apply_np(rgb: np.ndarray, d, blur_radius: int = 0) -> np.ndarray:
  """The NumPy twin of `apply` (same draw -> same image)."""
  d = JitterDraw(*(np.asarray(v, np.float32) for v in d))
  hed = rgb_to_hed_np(rgb.astype(np.float32)) * (1.0 + d.sigma) + d.bias
  x = hed_to_rgb_np(hed)
  x = np.clip(x + d.brightness, 0.0, 1.0)
  mean = x.mean()
  x = np.clip((x - mean) * (1.0 + d.contrast) + mean, 0.0, 1.0)
  x = _blur(np, x, d.blur, blur_radius)
  return np.clip(x + d.noise_scale * d.noise, 0.0, 1.0).astype(np.float32)


def jitter_batch(key: jax.Array, images: jax.Array, r: JitterRanges) -> jax.Array:
  """Each patch of [B, H, W, 3] with its own draw, vmapped (inside the jitted step)."""
  draws = jax.vmap(lambda k: draw(k, images.shape[1:], r))(jax.random.split(key, len(images)))
  return jax.vmap(lambda x, d: apply(x, d, r.blur_radius))(images, draws)


def draw_np(rng: np.random.Generator, shape, r: JitterRanges) -> JitterDraw:
  """A NumPy draw of the same distribution (the grain pipeline's)."""
  u = lambda s, half: rng.uniform(-half, half, s).astype(np.float32)
  return JitterDraw(u(3, r.sigma), u(3, r.bias), u((), r.brightness), u((), r.contrast),
                    rng.standard_normal(shape).astype(np.float32),
                    np.float32(rng.uniform(0, r.noise) if r.noise else 0.0),
                    np.float32(rng.uniform(0, r.blur) if r.blur else 0.0))


# --------------------------------------------------------------------------- morphology
@dataclasses.dataclass(frozen=True)
class MorphologyRanges:
  """HED-light's geometric part: zoom 1 + U(-scale, scale) about the centre; elastic
  deformation (Simard et al.): a displacement field of U(-1, 1) noise smoothed by a
  Gaussian of std U(sigma) pixels and multiplied by U(alpha). Zero scale and alpha = off."""
  scale: float = 0.0
  alpha: tuple[float, float] = (0.0, 0.0)
  sigma: tuple[float, float] = (9.0, 11.0)

  @classmethod
  def of(cls, c) -> "MorphologyRanges":
    return cls(scale=c.scale, alpha=tuple(c.elastic_alpha), sigma=tuple(c.elastic_sigma))

  @property
  def off(self) -> bool:
    return self.scale == 0.0 and max(self.alpha) == 0.0


def morphology_np(images: np.ndarray, rng: np.random.Generator,
                  r: MorphologyRanges) -> np.ndarray:
  """Zoom and elastic deformation of each patch of [B, H, W, C] (one bilinear resampling,
  symmetric edges), on the host: x and its stain-altered twin, made from the result, share
  the geometry."""
  from scipy import ndimage
  if r.off:
    return images
  out = np.empty_like(images)
  h, w = images.shape[1:3]
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing="ij")
  centre = ((h - 1) / 2, (w - 1) / 2)
  for i, x in enumerate(images):
    zoom = 1.0 + rng.uniform(-r.scale, r.scale)
    alpha, sigma = rng.uniform(*r.alpha), rng.uniform(*r.sigma)
    dr, dc = (ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
              for _ in range(2))
    coords = [centre[0] + (rows - centre[0]) / zoom + dr, centre[1] + (cols - centre[1]) / zoom + dc]
    for ch in range(x.shape[-1]):
      out[i, ..., ch] = ndimage.map_coordinates(x[..., ch], coords, order=1, mode="reflect")
  return out
