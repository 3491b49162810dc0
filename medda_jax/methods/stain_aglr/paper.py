"""What the Stain-AgLr paper defines: the three networks (appendix Table 3), the loss
L = L_CE + lambda1 * L_Reg + lambda2 * L_Cons (eqs. 1-3), the ablation's variants and the
plateau learning-rate schedule.

Per mini-batch (Fig. 3): x_hat = HEDlight(x) (same geometry, other colours); x and x_hat go
through the shared feature extractor in one batch; the classifier gives p and p_hat; the
decoder regenerates the raw x from the features of x_hat.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from medda_jax.methods.stain_aglr import hed
from medda_jax.models.conv import Conv

PAPER_FEATURES = (32, 64, 128, 256, 512)  # M_ft stages (appendix Table 3)
PAPER_DECODER = (256, 128, 64, 32, 32)  # M_gen stages, a mirror of M_ft (spec (b))


# --------------------------------------------------------------------------- networks
class ConvBlock(nn.Module):
  """2 x (conv3x3 + BatchNorm + ReLU)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(2):
      x = Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
    return x


class FeatureExtractor(nn.Module):
  """M_ft: per stage a conv block then 2x2 max-pool (the paper halves the side per stage
  without naming the operator)."""
  features: Sequence[int] = PAPER_FEATURES
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, stages: bool = False):
    outputs = []
    for f in self.features:
      x = ConvBlock(f, self.dtype)(x, train)
      outputs.append(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    return (x, outputs[::-1]) if stages else x  # stages: deepest first


class Classifier(nn.Module):
  """M_cls: global average pool -> dropout 0.5 -> Dense 256 + ReLU -> Dense 2 (logits; the
  table's ReLU after the last layer would clip logits, see docs)."""
  hidden: int = 256
  classes: int = 2
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.5  # the paper's; 0 lets a benchmark hold one step to a peer's

  @nn.compact
  def __call__(self, z, train: bool):
    h = jnp.mean(z, axis=(1, 2))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(h))
    return nn.Dense(self.classes, dtype=jnp.float32)(h)


class StainGenerator(nn.Module):
  """M_gen: per stage x2 bilinear up-sampling then a conv block, back to the input side;
  conv1x1 -> 3 channels + sigmoid. No skip connections by default: they would carry the
  altered colours of x_hat straight to the output (`skips` = features of M_ft's stages,
  deepest first, for the switch `gen_skips`)."""
  features: Sequence[int] = PAPER_DECODER
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool, skips: Sequence[jax.Array] = ()):
    x = z
    for i, f in enumerate(self.features):
      n, h, w, c = x.shape
      x = jax.image.resize(x, (n, 2 * h, 2 * w, c), "bilinear")
      if i < len(skips):
        x = jnp.concatenate([x, skips[i]], axis=-1)
      x = ConvBlock(f, self.dtype)(x, train)
    x = Conv(3, (1, 1), dtype=self.dtype)(x)
    return nn.sigmoid(x.astype(jnp.float32))


class StainAgLrNet(nn.Module):
  """The three networks under one set of variables: `features(x)`, `classify(z)`,
  `regenerate(z)`; `__call__` (inference) is the classifier alone."""
  features: Sequence[int] = PAPER_FEATURES
  decoder: Sequence[int] = PAPER_DECODER
  hidden: int = 256
  gen_skips: bool = False
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.5

  def setup(self):
    self.m_ft = FeatureExtractor(self.features, self.dtype)
    self.m_cls = Classifier(self.hidden, 2, self.dtype, self.dropout)
    self.m_gen = StainGenerator(self.decoder, self.dtype)

  def __call__(self, x, train: bool = False):
    return self.m_cls(self.m_ft(x, train), train)

  def train_outputs(self, x, x_hat, train: bool = True):
    """Logits of x and x_hat (one batch through M_ft, so BatchNorm sees both) and M_gen's
    regeneration from the features of x_hat."""
    n = len(x)
    z, stages = self.m_ft(jnp.concatenate([x, x_hat]), train, stages=True)
    logits = self.m_cls(z, train)
    skips = [s[n:] for s in stages] if self.gen_skips else ()
    return logits[:n], logits[n:], self.m_gen(z[n:], train, skips)

  def regenerate(self, x, train: bool = False):
    """M_gen(M_ft(x)): the stain-regenerated image."""
    z, stages = self.m_ft(x, train, stages=True)
    return self.m_gen(z, train, stages if self.gen_skips else ())


# --------------------------------------------------------------------------- losses
def kl_consistency(logits_raw, logits_alt) -> jax.Array:
  """L_Cons = mean over the batch of KL(p || p_hat) = sum_c p_c (log p_c - log p_hat_c),
  p from the raw image, p_hat from the stain-altered one (eq. 2)."""
  log_p = jax.nn.log_softmax(logits_raw.astype(jnp.float32))
  log_q = jax.nn.log_softmax(logits_alt.astype(jnp.float32))
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def regeneration_loss(regenerated, raw) -> jax.Array:
  """L_Reg = (1 / (W H)) sum_pixels ||M_gen(M_ft(x_hat)) - x||^2 (squared error summed over
  RGB, averaged over pixels and the batch; eq. 3)."""
  err = jnp.sum(jnp.square(regenerated.astype(jnp.float32) - raw.astype(jnp.float32)), -1)
  return jnp.mean(err)


def cross_entropy(logits, labels) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


@dataclasses.dataclass(frozen=True)
class Variant:
  """One column of the ablation: stain augmentation on/off and the two loss weights."""
  name: str
  title: str
  stain_aug: bool
  use_reg: bool
  use_cons: bool


VARIANTS = {
    "vanilla": Variant("vanilla", "Vanilla", False, False, False),
    "hed_light": Variant("hed_light", "HED-light aug", True, False, False),
    "hed_reg": Variant("hed_reg", "+ L_Reg", True, True, False),
    "hed_cons": Variant("hed_cons", "+ L_Cons", True, False, True),
    "stain_aglr": Variant("stain_aglr", "Stain-AgLr", True, True, True),
}


def weights_of(v: Variant, lambda_reg: float, lambda_cons: float) -> dict:
  """The per-run switches, carried in the train state so every variant runs the one
  compiled step: aug (0/1), the weights of L_Reg and L_Cons (0 = off)."""
  return {"aug": jnp.float32(v.stain_aug), "reg": jnp.float32(lambda_reg * v.use_reg),
          "cons": jnp.float32(lambda_cons * v.use_cons)}


def stain_aglr_loss(net: StainAgLrNet, ranges: hed.JitterRanges, detach_raw_in_kl: bool):
  """The train-step loss `(params, model_state, batch, rng) -> (loss, (model_state,
  metrics))` of eq. 1. model_state = {"batch_stats", "weights"}; batch = {"image" [B, H, W,
  3] in [0, 1] (geometrically augmented), "label" [B]}. With aug = 0 (vanilla) x_hat = x.
  L_CE is the mean cross-entropy over the joint batch [x, x_hat] (both carry the label)."""

  def loss_fn(params, model_state, batch, rng):
    w = model_state["weights"]
    jitter_key, dropout_key = jax.random.split(rng)
    x, y = batch["image"], batch["label"]
    x_alt = hed.jitter_batch(jitter_key, x, ranges)
    x_hat = w["aug"] * x_alt + (1.0 - w["aug"]) * x
    (logits, logits_hat, regen), mutated = net.apply(
        {"params": params, "batch_stats": model_state["batch_stats"]}, x, x_hat, True,
        method=StainAgLrNet.train_outputs, rngs={"dropout": dropout_key},
        mutable=["batch_stats"])
    ce = 0.5 * (cross_entropy(logits, y) + cross_entropy(logits_hat, y))
    raw = jax.lax.stop_gradient(logits) if detach_raw_in_kl else logits
    cons = kl_consistency(raw, logits_hat)
    reg = regeneration_loss(regen, x)
    loss = ce + w["reg"] * reg + w["cons"] * cons
    metrics = {"ce": ce, "reg": reg, "cons": cons}
    return loss, (dict(model_state, batch_stats=mutated["batch_stats"]), metrics)

  return loss_fn


def adam(learning_rate: float) -> optax.GradientTransformation:
  """Adam with its learning rate in the optimizer state (the plateau schedule sets it)."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


# --------------------------------------------------------------------------- schedule
@dataclasses.dataclass
class Plateau:
  """The paper's schedule, host side: after every epoch `update(val_loss)`; the learning
  rate is multiplied by `factor` when the validation loss has not improved for `patience`
  epochs; training stops once the rate has dropped to `min_lr`. The best epoch (lowest
  validation loss) is the model kept. Its fields are its whole state (JSON)."""
  lr: float
  patience: int
  factor: float = 0.1
  min_lr: float = 1e-5
  best: float = float("inf")
  waited: int = 0
  epochs: int = 0

  def update(self, val_loss: float) -> tuple[bool, bool]:
    """Returns (improved, stop)."""
    self.epochs += 1
    if val_loss < self.best:
      self.best, self.waited = float(val_loss), 0
      return True, False
    self.waited += 1
    if self.waited >= self.patience:
      self.lr *= self.factor
      self.waited = 0
      if self.lr <= self.min_lr * (1 + 1e-6):
        return False, True
    return False, False

  def state(self) -> dict:
    return dataclasses.asdict(self)
