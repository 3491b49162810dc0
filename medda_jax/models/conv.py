"""A convolution whose gradients XLA's CPU backend runs as fast inside a loop as outside.

XLA:CPU runs a convolution through its Eigen / YNNPACK kernels only when the operands are in
the canonical order (input and output batch-spatial-feature, kernel spatial-in-out); its
`ConvolutionCanonicalization` pass brings the others there with explicit transposes, but it
visits the entry computation only. The convolutions JAX's autodiff writes for the input
gradient (kernel spatial-out-in) and the kernel gradient (feature and batch swapped) are
not canonical, so inside a `lax.scan` or `while_loop` body (a training chunk, an inner
loop) they fall back to XLA's naive loop nest: a scan of 10 SGD steps of a 3-layer conv net
took 945 ms against 39 ms unrolled (64x64, batch 2, 1 thread). `conv_general_dilated` here
computes the same numbers with a custom VJP that writes both gradients as canonical
convolutions of transposed operands, at every order of differentiation (a gradient
penalty's double backward too), so scans run at the speed of unrolled code.

Use it as Flax's `nn.Conv(..., conv_general_dilated=conv_general_dilated)`. Grouped
convolutions and `batch_group_count` go to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax


def _dilate(shape, dilation):
  return [0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation)]


def _input_grad_padding(in_shape, window, strides, out_shape, padding, lhs_dil, rhs_dil):
  """Padding of the input gradient's convolution (as jax.lax's own transpose rule)."""
  lhs, rhs, out = (_dilate(in_shape, lhs_dil), _dilate(window, rhs_dil),
                   _dilate(out_shape, strides))
  before = np.subtract(rhs, [lo for lo, _ in padding]) - 1
  after = np.add(lhs, rhs) - 1 - np.asarray(out) - before
  return tuple((int(b), int(a)) for b, a in zip(before, after))


def _kernel_grad_padding(in_shape, window, strides, out_shape, padding, lhs_dil, rhs_dil):
  """Padding of the kernel gradient's convolution (as jax.lax's own transpose rule)."""
  lhs, rhs, out = (_dilate(in_shape, lhs_dil), _dilate(window, rhs_dil),
                   _dilate(out_shape, strides))
  lows = [lo for lo, _ in padding]
  return tuple((lo, o - l + r - lo - 1) for lo, o, l, r in zip(lows, out, lhs, rhs))


def _canonical_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers((0, ndim - 1) + spatial,  # input N, C, spatial
                                  (ndim - 1, ndim - 2) + tuple(range(ndim - 2)),  # O, I, sp.
                                  (0, ndim - 1) + spatial)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x, w, strides, padding, lhs_dilation, rhs_dilation, precision):
  """x [N, *spatial, C_in], w [*window, C_in, C_out] -> [N, *spatial', C_out]."""
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation,
                                  _canonical_numbers(x.ndim), precision=precision)


def _conv_fwd(x, w, strides, padding, lhs_dilation, rhs_dilation, precision):
  return _conv(x, w, strides, padding, lhs_dilation, rhs_dilation, precision), (x, w)


def _conv_bwd(strides, padding, lhs_dilation, rhs_dilation, precision, residuals, g):
  x, w = residuals
  n = x.ndim - 2
  in_spatial, window, out_spatial = x.shape[1:-1], w.shape[:n], g.shape[1:-1]
  # input gradient: g convolved with the reversed kernel, its in/out features swapped
  w_t = jnp.swapaxes(lax.rev(w, tuple(range(n))), -1, -2)
  gx = _canonical_conv(g, w_t, lhs_dilation,
             _input_grad_padding(in_spatial, window, strides, out_spatial, padding,
                                 lhs_dilation, rhs_dilation),
             strides, rhs_dilation, precision)
  # kernel gradient: the input's features as the batch, the batch as the features
  x_t = jnp.moveaxis(x, (0, -1), (-1, 0))  # [C_in, *spatial, N]
  g_t = jnp.moveaxis(g, 0, -2)  # [*spatial', N, C_out]
  gw = _canonical_conv(x_t, g_t, rhs_dilation,
             _kernel_grad_padding(in_spatial, window, strides, out_spatial, padding,
                                  lhs_dilation, rhs_dilation),
             lhs_dilation, strides, precision)  # [C_in, *window, C_out]
  return gx.astype(x.dtype), jnp.moveaxis(gw, 0, -2).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _xla_would_swap(x_shape, w_shape, strides, padding, lhs_dilation, rhs_dilation) -> bool:
  """Whether XLA's algebraic simplifier would swap this convolution's operands (its
  ConvOperandSwapper rule: the kernel's window, over the spatial dimensions that are not
  plain contractions, larger than the input's)."""
  kernel_product = swapped_product = 1
  for size, window, s, (lo, hi), a, d in zip(x_shape[1:-1], w_shape[:-2], strides, padding,
                                             lhs_dilation, rhs_dilation):
    plain = lo == 0 and hi == 0 and d == 1
    if plain and ((a == window and s == window - 1)
                  or (window == size and a == 1 and s == 1)):
      continue  # a group or pure contraction dimension: not counted
    kernel_product *= window
    swapped_product *= (window if size == 1 and s == 1 and d == 1 and lo == hi == window - 1
                        else size)
  return kernel_product > swapped_product


def _canonical_conv(x, w, strides, padding, lhs_dilation, rhs_dilation, precision):
  """`_conv`, or the same numbers with input and kernel swapped where XLA would swap them
  itself: its swapped convolution has a reversed, non-canonical window that XLA:CPU
  canonicalizes only outside loops (a gradient penalty's second-order kernel gradients
  inside a scan ran on the slow path). Swapped here it stays canonical: the kernel's
  out-features become the batch, the input's batch the out-features, both operands are
  reversed in space, and the two dilations trade places."""
  if not _xla_would_swap(x.shape, w.shape, strides, padding, lhs_dilation, rhs_dilation):
    return _conv(x, w, strides, padding, lhs_dilation, rhs_dilation, precision)
  n = x.ndim - 2
  spatial = tuple(range(1, n + 1))
  in_sizes, window = _dilate(x.shape[1:-1], lhs_dilation), _dilate(w.shape[:n], rhs_dilation)
  swapped_padding = tuple((i + lo - k, i + hi - k)
                          for i, k, (lo, hi) in zip(in_sizes, window, padding))
  new_x = jnp.moveaxis(lax.rev(w, tuple(range(n))), -1, 0)  # [C_out, *window, C_in]
  new_w = jnp.moveaxis(lax.rev(x, spatial), 0, -1)  # [*spatial, C_in, N]
  y = _conv(new_x, new_w, strides, swapped_padding, rhs_dilation, lhs_dilation, precision)
  return jnp.moveaxis(y, (0, -1), (-1, 0))  # [C_out, *out, N] -> [N, *out, C_out]


def _spec_order(spec: Sequence[int]) -> tuple[int, ...]:
  """The axes of an operand in canonical order: (batch or out, *spatial, feature or in)
  for inputs and outputs; (*spatial, in, out) for kernels is built by the caller."""
  return (spec[0], *spec[2:], spec[1])


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`jax.lax.conv_general_dilated` with canonical convolutions in its gradients."""
  n = lhs.ndim - 2
  if (feature_group_count != 1 or batch_group_count != 1 or preferred_element_type is not None
      or n < 1 or isinstance(padding, str) and padding not in ("SAME", "VALID", "SAME_LOWER")):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs_dilation = tuple(lhs_dilation or (1,) * n)
  rhs_dilation = tuple(rhs_dilation or (1,) * n)
  window_strides = tuple(window_strides)
  x = jnp.transpose(lhs, _spec_order(dn.lhs_spec))
  w = jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:-1], _dilate(w.shape[:n], rhs_dilation),
                                  window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  y = _canonical_conv(x, w, window_strides, padding, lhs_dilation, rhs_dilation, precision)
  return jnp.transpose(y, np.argsort(_spec_order(dn.out_spec)))


class Conv(nn.Conv):
  """`flax.linen.Conv` computing with `conv_general_dilated` above: the same parameters,
  names and numbers, and canonical convolutions in its gradients."""
  conv_general_dilated: Callable | None = conv_general_dilated


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
  """lax.conv_transpose's padding for "SAME" / "VALID" (effective kernel size k)."""
  if padding == "SAME":
    total = k + s - 2
    before = k - 1 if s > k - 1 else int(np.ceil(total / 2))
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    before = k - 1
  else:
    raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs, got {padding!r}")
  return before, total - before


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None,
                   transpose_kernel: bool = False, precision=None):
  """`jax.lax.conv_transpose` (the same numbers) through `conv_general_dilated` above."""
  n = lhs.ndim - 2
  if dimension_numbers is None:
    spatial = "HWD"[:n] if n <= 3 else None
    dimension_numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  rhs_dilation = tuple(rhs_dilation or (1,) * n)
  if isinstance(padding, str):
    window = _dilate([rhs.shape[d] for d in dn.rhs_spec[2:]], rhs_dilation)
    padding = [_transpose_padding(k, s, padding) for k, s in zip(window, strides)]
  if transpose_kernel:  # the gradient of a forward convolution: flip, swap in and out
    rhs = jnp.swapaxes(lax.rev(rhs, dn.rhs_spec[2:]), dn.rhs_spec[0], dn.rhs_spec[1])
  return conv_general_dilated(lhs, rhs, (1,) * n, padding, tuple(strides), rhs_dilation, dn,
                              precision=precision)


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` (same parameters, names and numbers) computing with
  `conv_transpose` above; one batch axis, no mask, no circular padding."""

  @nn.compact
  def __call__(self, inputs):
    kernel_size = ((self.kernel_size,) if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    n = len(kernel_size)
    broadcast = lambda v: (v or 1,) * n if v is None or isinstance(v, int) else tuple(v)
    if self.mask is not None or self.padding == "CIRCULAR" or inputs.ndim != n + 2:
      raise NotImplementedError("ConvTranspose: mask, circular padding and several batch "
                                "axes are flax.linen.ConvTranspose's")
    in_features = inputs.shape[-1]
    shape = kernel_size + ((self.features, in_features) if self.transpose_kernel
                           else (in_features, self.features))
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    padding = (self.padding if isinstance(self.padding, str)
               else nn.linear.canonicalize_padding(self.padding, n))
    y = conv_transpose(inputs, kernel, broadcast(self.strides), padding,
                       rhs_dilation=broadcast(self.kernel_dilation),
                       transpose_kernel=self.transpose_kernel, precision=self.precision)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y
