"""The debiasing network and update rules of Bevan & Atapour-Abarghouei, "Detecting Melanoma
Fairly" (DART 2022), as pure functions.

Network: feature extractor f (a ResNet/ResNeXt trunk, pooled features z), main head
g = Dropout(0.5) -> Linear(1) (melanoma logit, BCE), bias head h = Linear(K) (skin type,
class-weighted cross-entropy). Three optimisers (SGD, momentum 0.9), each with its own optax
state: main over (f, g), bias over h, confusion over f (TABE/CLGR only).

Per mini-batch (the reference code's `train_epoch_variations.py`):
  baseline  BCE(g(f(x)), y); main step.
  LNTL      1. BCE + lambda * mean_n sum_k p log p  (p = softmax h(f(x))); main step.
            2. wCE(h(GRL(f(x))), b); main step (f gets the reversed gradient, g a zero one)
               and bias step.
  TABE      1. BCE - alpha * sum_{n,k} u log p / B; main step, then confusion step on f
               with the same gradient.
            2. as LNTL step 2 without the GRL.
  CLGR      TABE with the GRL in step 2.
Without the GRL, step 2 detaches z (f is not taught the bias) unless `legacy_encoder_bias_step`
(the code, whose encoder then minimises the bias loss). Step 2 still steps the main optimiser
with zero gradients for what the bias loss does not reach: PyTorch 1.8's zero_grad zeroes
gradients rather than dropping them, so momentum keeps moving f and g there, as in the code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.models import resnet

METHODS = ("baseline", "lntl", "lntl_star", "tabe", "clgr")
TITLES = {"baseline": "Baseline", "lntl": "LNTL", "lntl_star": "LNTL* (no GRL)",
          "tabe": "TABE", "clgr": "CLGR"}
CONFUSION_TARGETS = ("uniform", "random_uniform_noise")
# ImageNet statistics (the reference normalises with them; harmless for a random init)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------- GRL
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_reverse(x, scale: float = 0.1):
  """Identity forward; the backward pass multiplies the gradient by -scale."""
  return x


def _grl_fwd(x, scale):
  return x, None


def _grl_bwd(scale, _, g):
  return (jax.tree.map(lambda t: -scale * t, g),)


grad_reverse.defvjp(_grl_fwd, _grl_bwd)


# --------------------------------------------------------------------------- network
class MainHead(nn.Module):
  """g: Dropout(0.5) -> Linear(1), the melanoma logit."""

  dropout: float = 0.5

  @nn.compact
  def __call__(self, z, train: bool):
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    return resnet.torch_linear(1, z.shape[-1], jnp.float32, "fc")(z)[:, 0]


class BiasHead(nn.Module):
  """h: Linear(K), the skin-type logits."""

  classes: int

  @nn.compact
  def __call__(self, z):
    return resnet.torch_linear(self.classes, z.shape[-1], jnp.float32, "fc")(z)


@dataclasses.dataclass(frozen=True)
class Network:
  encoder: nn.Module  # a ResNet with num_classes=0: pooled features
  main: MainHead
  bias: BiasHead

  def init(self, key, image_size: int):
    kf, kg, kh = jax.random.split(key, 3)
    x = jnp.zeros((1, image_size, image_size, 3))
    v = self.encoder.init(kf, x, train=False)
    z = self.encoder.apply(v, x, train=False)
    params = {"f": v["params"], "g": self.main.init(kg, z, train=False)["params"],
              "h": self.bias.init(kh, z)["params"]}
    return params, v["batch_stats"]

  def features(self, f, stats, x, train: bool):
    """(z, batch statistics): train mode uses and updates the batch statistics."""
    x = (x - MEAN) / STD
    if not train:
      return self.encoder.apply({"params": f, "batch_stats": stats}, x, train=False), stats
    z, mutated = self.encoder.apply({"params": f, "batch_stats": stats}, x, train=True,
                                    mutable=["batch_stats"])
    return z, mutated["batch_stats"]

  def melanoma_logit(self, g, z, rng=None):
    train = rng is not None
    return self.main.apply({"params": g}, z, train=train,
                           rngs={"dropout": rng} if train else None)

  def bias_logits(self, h, z):
    return self.bias.apply({"params": h}, z)


def build_network(arch: str, depth_stages, width: int, classes: int, dtype) -> Network:
  """`arch` "resnext101_32x8d" (the paper) or "resnet" (bottleneck ResNet with the given
  stages and base width, e.g. a small demo trunk)."""
  if arch == "resnext101_32x8d":
    encoder = resnet.resnext101_32x8d(num_classes=0, dtype=dtype)
  elif arch == "resnet":
    encoder = resnet.ResNet(stage_sizes=tuple(depth_stages), width=width, num_classes=0,
                            dtype=dtype)
  else:
    raise ValueError(f"unknown architecture {arch!r}")
  return Network(encoder, MainHead(), BiasHead(classes))


# --------------------------------------------------------------------------- losses
def bce_with_logits(logits, targets):
  return optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32)).mean()


def negative_entropy(bias_logits):
  """mean_n sum_k p log p of the bias prediction (LNTL's pseudo loss, minimised)."""
  logp = jax.nn.log_softmax(bias_logits)
  return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def confusion_loss(bias_logits, target):
  """-sum_{n,k} u_{n,k} log p_{n,k} / B (TABE's cross-entropy against the target u)."""
  logp = jax.nn.log_softmax(bias_logits)
  return -jnp.sum(target * logp) / bias_logits.shape[0]


def weighted_cross_entropy(logits, labels, weights):
  """torch CrossEntropyLoss(weight=w): sum_n w_{b_n} CE_n / sum_n w_{b_n}; labels < 0
  (no skin type) count nothing."""
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  w = jnp.where(valid, weights[safe], 0.0)
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)


def class_weights(labels: np.ndarray, classes: int) -> np.ndarray:
  """Inverse training-set frequency of each bias class, normalised to sum 1 (a class absent
  from the training set gets 0)."""
  labels = np.asarray(labels)
  counts = np.bincount(labels[labels >= 0], minlength=classes).astype(np.float64)
  freq = counts / counts.sum()
  inv = np.where(counts > 0, 1.0 / np.where(counts > 0, freq, 1.0), 0.0)
  return (inv / inv.sum()).astype(np.float32)


# --------------------------------------------------------------------------- state
@dataclasses.dataclass(frozen=True)
class Hyper:
  """The update rules' constants (spec (b))."""

  main_lr: float = 3e-4
  bias_lr: float = 3e-4  # LNTL; TABE and CLGR use 3e-3
  confusion_lr: float = 3e-3
  momentum: float = 0.9
  lntl_lambda: float = 0.01
  tabe_alpha: float = 0.03
  grl_scale: float = 0.1
  confusion_target: str = "uniform"
  legacy_encoder_bias_step: bool = False


def optimizers(hp: Hyper) -> dict[str, optax.GradientTransformation]:
  sgd = lambda lr: optax.sgd(lr, momentum=hp.momentum)  # noqa: E731 (torch SGD, no nesterov)
  return {"main": sgd(hp.main_lr), "bias": sgd(hp.bias_lr), "confusion": sgd(hp.confusion_lr)}


@flax.struct.dataclass
class FairState:
  params: Any  # {"f", "g", "h"}
  batch_stats: Any
  opt: Any  # {"main": over {"f", "g"}, "bias": over h, "confusion": over f}
  rng: jax.Array
  step: jax.Array

  @classmethod
  def create(cls, params, batch_stats, txs, rng) -> "FairState":
    opt = {"main": txs["main"].init({"f": params["f"], "g": params["g"]}),
           "bias": txs["bias"].init(params["h"]), "confusion": txs["confusion"].init(params["f"])}
    return cls(params, batch_stats, opt, rng, jnp.zeros((), jnp.int32))


def _apply(tx, grads, opt_state, params):
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


# --------------------------------------------------------------------------- update rules
def update_rule(method: str, net: Network, hp: Hyper, weights):
  """`step(state, batch) -> (state, metrics)` for one mini-batch {"images", "labels",
  "bias"} of `method` (see the module docstring); `weights` are the bias classes' weights."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  txs = optimizers(hp)
  weights = jnp.asarray(weights)
  grl = method in ("lntl", "clgr")
  tabe = method in ("tabe", "clgr")

  def step1_loss(fg, h, stats, batch, rng):
    drop_rng, noise_rng = jax.random.split(rng)
    z, stats = net.features(fg["f"], stats, batch["images"], train=True)
    main = bce_with_logits(net.melanoma_logit(fg["g"], z, drop_rng), batch["labels"])
    if method == "baseline":
      return main, (stats, {"main": main})
    bias_logits = net.bias_logits(h, z)
    if tabe:
      if hp.confusion_target == "uniform":
        u = jnp.full(bias_logits.shape, 1.0 / bias_logits.shape[-1])
      else:  # the code: a fresh U(0, 1) tensor, not normalised
        u = jax.random.uniform(noise_rng, bias_logits.shape)
      extra = hp.tabe_alpha * confusion_loss(bias_logits, u)
    else:
      extra = hp.lntl_lambda * negative_entropy(bias_logits)
    return main + extra, (stats, {"main": main, "debias": extra})

  def step2_loss(fh, stats, batch):
    z, stats = net.features(fh["f"], stats, batch["images"], train=True)
    if grl:
      z = grad_reverse(z, hp.grl_scale)
    elif not hp.legacy_encoder_bias_step:
      z = jax.lax.stop_gradient(z)
    loss = weighted_cross_entropy(net.bias_logits(fh["h"], z), batch["bias"], weights)
    return loss, stats

  def step(state: FairState, batch):
    p, opt = state.params, dict(state.opt)
    rng, step_rng = jax.random.split(state.rng)
    fg = {"f": p["f"], "g": p["g"]}
    (loss, (stats, metrics)), grads = jax.value_and_grad(step1_loss, has_aux=True)(
        fg, p["h"], state.batch_stats, batch, step_rng)
    new_fg, opt["main"] = _apply(txs["main"], grads, opt["main"], fg)
    f = new_fg["f"]
    if tabe:  # the confusion optimiser steps f again on the same gradient
      f, opt["confusion"] = _apply(txs["confusion"], grads["f"], opt["confusion"], f)
    h = p["h"]
    if method != "baseline":
      (bias_loss, stats), g2 = jax.value_and_grad(step2_loss, has_aux=True)(
          {"f": f, "h": h}, stats, batch)
      fg2 = {"f": f, "g": new_fg["g"]}
      new_fg, opt["main"] = _apply(txs["main"], {"f": g2["f"], "g": jax.tree.map(
          jnp.zeros_like, fg2["g"])}, opt["main"], fg2)
      f = new_fg["f"]
      h, opt["bias"] = _apply(txs["bias"], g2["h"], opt["bias"], h)
      metrics = dict(metrics, bias=bias_loss)
    params = {"f": f, "g": new_fg["g"], "h": h}
    state = state.replace(params=params, batch_stats=stats, opt=opt, rng=rng,
                          step=state.step + 1)
    return state, dict(metrics, loss=loss)

  return step


def hyper_for(method: str, main_lr: float, lntl_bias_lr: float, tabe_bias_lr: float,
              confusion_lr: float, **kw) -> Hyper:
  """LNTL's bias head learns at the base rate, TABE's and CLGR's at their own."""
  bias_lr = tabe_bias_lr if method in ("tabe", "clgr") else lntl_bias_lr
  return Hyper(main_lr=main_lr, bias_lr=bias_lr, confusion_lr=confusion_lr, **kw)
