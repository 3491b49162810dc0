"""Feather-light Fourier domain adaptation (Zakazov, Shaposhnikov, Bespalov, Dylov; DART 2022)
as pure functions: the k-space style swap, multi-source transfer (MST), SR-SIM and the choice
of style donors.

A target slice keeps the phase of its 2-D spectrum (the anatomy) and takes the low-frequency
amplitudes (the "style") of a source slice:

  F(x) = fftshift(fft2(x)),  A = |F|,  P = angle(F)
  M_beta = 1 inside the window around the centred zero frequency (H//2, W//2), else 0
  f_FDA(s, t) = | ifft2(ifftshift((M_beta A(s) + (1 - M_beta) A(t)) exp(i P(t)))) |, / its max

MST restyles a target slice with n donors, segments every version with the unchanged source
model and averages the sigmoid probabilities before thresholding. Donors are picked by SR-SIM
(Zhang & Li 2012, as ported by `piq`) at scan level (3D), slice level (2D) or slice level
with +-m neighbours (2.5D), or at random (none).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

WINDOWS = ("circle", "square")
DONOR_MODES = ("none", "3d", "2.5d", "2d")
EPS32 = float(np.finfo(np.float32).eps)  # torch.finfo(float32).eps, piq's guard


# --------------------------------------------------------------------------- the swap
def circular_mask(h: int, w: int, beta) -> jax.Array:
  """[h, w] float: 1 where the distance from (h//2, w//2) is below beta * min(h, w) (the
  paper's window; beta may be traced, so one compilation serves the whole beta grid)."""
  u = (jnp.arange(h) - h // 2)[:, None].astype(jnp.float32)
  v = (jnp.arange(w) - w // 2)[None, :].astype(jnp.float32)
  radius = jnp.asarray(beta, jnp.float32) * min(h, w)
  return (u * u + v * v < radius * radius).astype(jnp.float32)


def square_mask(h: int, w: int, beta) -> jax.Array:
  """[h, w] float: the original FDA's window (Yang & Soatto 2020), the square of half-side
  b = floor(beta * min(h, w)) around (h//2, w//2), both ends included (so beta = 0 still
  swaps the zero frequency)."""
  b = jnp.floor(jnp.asarray(beta, jnp.float32) * min(h, w))
  u = jnp.abs(jnp.arange(h) - h // 2)[:, None].astype(jnp.float32)
  v = jnp.abs(jnp.arange(w) - w // 2)[None, :].astype(jnp.float32)
  return ((u <= b) & (v <= b)).astype(jnp.float32)


def window_mask(window: str, h: int, w: int, beta) -> jax.Array:
  if window == "circle":
    return circular_mask(h, w, beta)
  if window == "square":
    return square_mask(h, w, beta)
  raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def centred_spectrum(x: jax.Array) -> jax.Array:
  return jnp.fft.fftshift(jnp.fft.fft2(x), axes=(-2, -1))


def swapped_spectrum(src: jax.Array, tgt: jax.Array, beta, window: str = "circle") -> jax.Array:
  """The centred spectrum the swap inverts: source amplitudes inside the window, target
  amplitudes outside, the target's phase everywhere."""
  h, w = tgt.shape[-2:]
  mask = window_mask(window, h, w, beta)
  fs, ft = centred_spectrum(src), centred_spectrum(tgt)
  amplitude = mask * jnp.abs(fs) + (1.0 - mask) * jnp.abs(ft)
  return amplitude * jnp.exp(1j * jnp.angle(ft))


def fda_swap(src: jax.Array, tgt: jax.Array, beta, window: str = "circle") -> jax.Array:
  """The target slice restyled with the source slice's low frequencies: the magnitude of
  the inverse FFT, divided by its maximum (the reference's `back_to_pic`), in [0, 1]."""
  mixed = swapped_spectrum(src, tgt, beta, window)
  image = jnp.abs(jnp.fft.ifft2(jnp.fft.ifftshift(mixed, axes=(-2, -1))))
  peak = jnp.max(image, axis=(-2, -1), keepdims=True)
  return image / jnp.where(peak > 0, peak, 1.0)


@functools.partial(jax.jit, static_argnames=("window",))
def restyle_slices(donors: jax.Array, targets: jax.Array, beta, window: str = "circle"):
  """donors [Z, n, H, W], targets [Z, H, W] -> [Z, n, H, W]: every target slice restyled by
  each of its n donors (vmapped over donors, then over slices)."""
  per_slice = jax.vmap(fda_swap, in_axes=(0, None, None, None))
  return jax.vmap(per_slice, in_axes=(0, 0, None, None))(donors, targets, beta, window)


# --------------------------------------------------------------------------- MST
def mst_probability(logits, axis: int = 1):
  """Multi-source transfer: the mean over the donor axis of the sigmoid probabilities
  (averaged before thresholding, pitfall 4)."""
  logits = np.asarray(logits, np.float64)
  return np.mean(1.0 / (1.0 + np.exp(-logits)), axis=axis)


def mst_mask(logits, axis: int = 1) -> np.ndarray:
  return mst_probability(logits, axis) > 0.5


# --------------------------------------------------------------------------- SR-SIM
SCHARR_X = np.array([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]], np.float32) / 16
SRSIM_C1, SRSIM_C2, SRSIM_ALPHA = 0.40, 225.0, 0.50  # constants of the SR-SIM paper


def _correlate(x: jax.Array, kernel, pad: tuple[int, int]) -> jax.Array:
  """2-D cross-correlation (torch's conv2d) of [H, W] with zero padding (before, after) on
  both axes."""
  k = jnp.asarray(kernel, x.dtype)
  out = jax.lax.conv_general_dilated(x[None, None], k[None, None], (1, 1), (pad, pad))
  return out[0, 0]


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """piq's gaussian_filter; an even size gets a zero first row and column (MATLAB's
  fspecial on an even size), so it has size + 1 taps centred like MATLAB's."""
  coords = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
  g = np.exp(-(coords[None, :] ** 2 + coords[:, None] ** 2) / (2 * sigma ** 2))
  g = (g / g.sum()).astype(np.float32)
  if size % 2 == 0:
    g = np.pad(g, ((1, 0), (1, 0)))
  return g


def resize(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Bicubic resize with antialiasing, standing in for piq's MATLAB-style imresize (the
  borders are handled differently, see docs/fda.md). Same shape: unchanged."""
  if tuple(x.shape) == tuple(shape):
    return x
  return jax.image.resize(x, shape, method="bicubic", antialias=True)


def gradient_magnitude(x: jax.Array) -> jax.Array:
  """Scharr gradient magnitude with zero padding (piq's gradient_map)."""
  gx = _correlate(x, SCHARR_X, (1, 1))
  gy = _correlate(x, SCHARR_X.T, (1, 1))
  return jnp.sqrt(gx * gx + gy * gy)


def spectral_residual_saliency(x: jax.Array, scale: float = 0.25, kernel_size: int = 3,
                               sigma: float = 3.8, gaussian_size: int = 10) -> jax.Array:
  """Spectral-residual visual saliency (Hou & Zhang 2007) of [H, W], as SR-SIM uses it:
  downsized by `scale`, log-amplitude minus its local mean (replicate padding), back with
  the phase, squared magnitude, Gaussian blur, min-max to [0, 1], resized back."""
  h, w = x.shape
  small = resize(x, (math.ceil(h * scale), math.ceil(w * scale)))
  f = jnp.fft.fft2(small)
  log_amplitude = jnp.log(jnp.abs(f) + EPS32)
  phase = jnp.angle(f)
  up, down = (kernel_size - 1) // 2, kernel_size // 2
  padded = jnp.pad(log_amplitude, ((up, down), (up, down)), mode="edge")
  box = np.full((kernel_size, kernel_size), 1.0 / kernel_size ** 2, np.float32)
  residual = log_amplitude - _correlate(padded, box, (0, 0))
  saliency = jnp.abs(jnp.fft.ifft2(jnp.exp(residual + 1j * phase))) ** 2
  g = gaussian_kernel(gaussian_size, sigma)
  half = (g.shape[0] - 1) // 2
  saliency = _correlate(saliency, g, (half, half))
  lo, hi = jnp.min(saliency), jnp.max(saliency)
  saliency = (saliency - lo) / (hi - lo + EPS32)
  return resize(saliency, (h, w))


def srsim_features(x: jax.Array, scale: float = 0.25, kernel_size: int = 3, sigma: float = 3.8,
                   gaussian_size: int = 10) -> tuple[jax.Array, jax.Array]:
  """(saliency, gradient magnitude) of one [H, W] image in [0, 1]: everything SR-SIM needs
  of an image, so a similarity table computes them once per slice."""
  x = x.astype(jnp.float32) * 255.0
  h, w = x.shape
  k = max(1, round(min(h, w) / 256))  # piq averages large images first
  if k > 1:
    x = jnp.pad(x, (((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2)))
    hh, ww = x.shape[0] // k, x.shape[1] // k
    x = x[:hh * k, :ww * k].reshape(hh, k, ww, k).mean(axis=(1, 3))
  saliency = spectral_residual_saliency(x, scale, kernel_size, sigma, gaussian_size)
  return saliency, gradient_magnitude(x)


def similarity_map(a, b, constant):
  return (2.0 * a * b + constant) / (a * a + b * b + constant)


def srsim_from_features(sal_x, grad_x, sal_y, grad_y) -> jax.Array:
  """SR-SIM from two images' features (any leading axes, broadcast): similarity of the
  saliency maps times that of the gradient maps to the power alpha, pooled with the
  larger saliency as weight."""
  weight = jnp.maximum(sal_x, sal_y)
  score = (similarity_map(sal_x, sal_y, SRSIM_C1)
           * similarity_map(grad_x, grad_y, SRSIM_C2) ** SRSIM_ALPHA * weight)
  return score.sum(axis=(-2, -1)) / (weight.sum(axis=(-2, -1)) + EPS32)


def srsim(x: jax.Array, y: jax.Array, scale: float = 0.25, kernel_size: int = 3,
          sigma: float = 3.8, gaussian_size: int = 10) -> jax.Array:
  """SR-SIM of two [H, W] images in [0, 1] (grey, data_range 1; symmetric in x and y).
  piq min-max normalises the saliency over a whole batch; here over each image, which is
  what the MATLAB original (and piq with a batch of one) does."""
  kw = dict(scale=scale, kernel_size=kernel_size, sigma=sigma, gaussian_size=gaussian_size)
  return srsim_from_features(*srsim_features(x, **kw), *srsim_features(y, **kw))


@functools.partial(jax.jit, static_argnames=("scale", "kernel_size", "sigma", "gaussian_size"))
def srsim_features_batch(x, scale=0.25, kernel_size=3, sigma=3.8, gaussian_size=10):
  """[B, H, W] -> (saliency [B, H, W], gradient magnitude [B, H, W])."""
  return jax.vmap(lambda im: srsim_features(im, scale, kernel_size, sigma, gaussian_size))(x)


@jax.jit
def similarity_rows(target_sal, target_grad, bank_sal, bank_grad, index):
  """[B, K, D] SR-SIM of B target slices against their candidates: `index` [B, K, D] points
  into the bank of source-slice features (the caller masks invalid entries)."""
  cand_sal, cand_grad = bank_sal[index], bank_grad[index]  # [B, K, D, H, W]
  return srsim_from_features(target_sal[:, None, None], target_grad[:, None, None],
                             cand_sal, cand_grad)


# --------------------------------------------------------------------------- donors
def corresponding_slice(i, target_slices: int, source_slices: int):
  """The source slice at the relative position of target slice i (the identity when the
  scans have the same number of slices, as registered CC359 scans do)."""
  if target_slices <= 1:
    return np.zeros_like(np.asarray(i))
  return np.rint(np.asarray(i) * (source_slices - 1) / (target_slices - 1)).astype(np.int64)


def candidate_index(target_slices: int, source_slices: list[int], m: int):
  """For every target slice i, source scan k and offset d in -m..m: the source slice
  corresponding_slice(i) + d, and whether it exists. Returns (slices [Z, K, 2m+1],
  valid [Z, K, 2m+1])."""
  i = np.arange(target_slices)
  offsets = np.arange(-m, m + 1)
  slices = np.stack([corresponding_slice(i, target_slices, z)[:, None] + offsets[None]
                     for z in source_slices], axis=1)
  valid = (slices >= 0) & (slices < np.asarray(source_slices)[None, :, None])
  return slices, valid


def _top(scores: np.ndarray, n: int) -> np.ndarray:
  """Indices of the n largest finite scores, best first (ties: lower index first); fewer
  candidates than n are cycled."""
  order = np.argsort(-scores, kind="stable")
  order = order[np.isfinite(scores[order])]
  return np.resize(order, n)


def select_donors(table: np.ndarray, mode: str, n: int, m: int, rng=None) -> np.ndarray:
  """Donors for every target slice from a similarity table.

  table [Z, K, 2m+1]: SR-SIM of target slice i with slice corresponding(i) + d of source
  scan k (NaN where that slice does not exist); column m is the corresponding slice.
  Returns [Z, n, 2] int: (source scan, offset d) of each donor, most similar first.
    none: a random source scan per (slice, donor), offset 0 (rng: np.random.Generator)
    3d:   the n scans with the highest mean similarity over slices; every slice takes its
          corresponding slices of them
    2d:   per slice, the n most similar corresponding slices over all scans
    2.5d: per slice, the n most similar among the corresponding slices and their +-m
          neighbours of all scans
  """
  z, k, width = table.shape
  if width != 2 * m + 1:
    raise ValueError(f"table has {width} offsets, expected 2m+1 = {2 * m + 1}")
  donors = np.zeros((z, n, 2), np.int64)
  centre = table[:, :, m]
  if mode == "none":
    if rng is None:
      raise ValueError("mode 'none' needs an rng")
    donors[:, :, 0] = rng.integers(0, k, size=(z, n))
    return donors
  if mode == "3d":
    scans = _top(np.nanmean(centre, axis=0), n)
    donors[:, :, 0] = scans[None, :]
    return donors
  if mode == "2d":
    for i in range(z):
      donors[i, :, 0] = _top(centre[i], n)
    return donors
  if mode == "2.5d":
    for i in range(z):
      flat = _top(table[i].reshape(-1), n)
      donors[i, :, 0], donors[i, :, 1] = flat // width, flat % width - m
    return donors
  raise ValueError(f"donor mode must be one of {DONOR_MODES}, got {mode!r}")
