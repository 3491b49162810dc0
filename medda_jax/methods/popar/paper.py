"""POPAR (Pang et al., DART 2022): patch order prediction and appearance recovery.

Each image is cut into n non-overlapping k x k patches and, per image, one distortion is
applied: the patch positions are shuffled, or the whole image's appearance is distorted by
the Models Genesis transformations (`data/models_genesis.py`) with the positions kept. The
transformer sees the distorted patches (position embeddings by slot, never permuted) and, for
every output token, classifies which original position its patch came from (n-way) and
regresses the original patch of its slot:

  L_pop = (1/B) sum_b sum_j CE(order logits_bj, y_bj)       y = permutation, or identity
  L_ar  = (1/B) sum_b sum_j ||p_bj - appearance_bj||^2       p = original patch of slot j
  L     = lambda L_pop + (1 - lambda) L_ar                   lambda = 0.5

The patch side k is the encoder's output stride (ViT: its patch, 16; Swin: 32 at the final
stage), so one output token sits over one shuffled patch for both backbones (pitfall 3 of the
spec: Swin's image is shuffled in 32 x 32 blocks, not in its 4 x 4 embeddings).

The paper's sub-task ablation (its supplement, Table 5) is `TASKS`: order classification
alone (`poc`), with misplaced-patch recovery (`poc+mpr`), Models Genesis restoration alone
(`mgr`), and POPAR (`popar`).
"""

from __future__ import annotations

import dataclasses

import einops
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.data import models_genesis
from medda_jax.methods.simmim.paper import decay_mask
from medda_jax.models.dense import Dense


@dataclasses.dataclass(frozen=True)
class Task:
  """Which distortion a sample gets and which losses train on it."""
  shuffle_probability: float | None  # None: the configured probability (POPAR's 1/2)
  order_weight: float | None  # None: the configured lambda
  label: str


TASKS = {
    "popar": Task(None, None, "POPAR: order prediction + appearance recovery"),
    "poc+mpr": Task(1.0, None, "order classification + misplaced-patch recovery"),
    "poc": Task(1.0, 1.0, "order classification only"),
    "mgr": Task(0.0, 0.0, "Models Genesis restoration only"),
}


# --------------------------------------------------------------------------- patches
def patchify(image: np.ndarray, k: int) -> np.ndarray:
  """[H, W, C] -> [n, k*k*C] in raster order of the (H/k) x (W/k) grid."""
  return einops.rearrange(image, "(gh i) (gw j) c -> (gh gw) (i j c)", i=k, j=k)


def unpatchify(patches: np.ndarray, k: int, grid: tuple[int, int]) -> np.ndarray:
  """[..., n, k*k*C] -> [..., H, W, C]: the inverse of `patchify`."""
  return einops.rearrange(patches, "... (gh gw) (i j c) -> ... (gh i) (gw j) c",
                          gh=grid[0], gw=grid[1], i=k, j=k)


def distort(image: np.ndarray, k: int, rng: np.random.Generator, shuffle_probability: float,
            genesis: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One training element from a [S, S, C] image in [0, 1]: (distorted image, order
  targets int32 [n], appearance targets float32 [n, k*k*C]).

  Shuffled: slot j holds original patch perm[j], whose position perm[j] is slot j's order
  target. Otherwise the Models Genesis distortion of the whole image, order targets the
  identity. The appearance target is always the original patch of each slot."""
  grid = (image.shape[0] // k, image.shape[1] // k)
  patches = patchify(image, k)
  n = len(patches)
  if rng.random() < shuffle_probability:
    order = rng.permutation(n)
    shown = unpatchify(patches[order], k, grid)
  else:
    order = np.arange(n)
    shown = np.stack([models_genesis.distort(image[..., ch], rng, **genesis)
                      for ch in range(image.shape[-1])], axis=-1)
  return shown.astype(np.float32), order.astype(np.int32), patches.astype(np.float32)


def restore_order(shown: np.ndarray, order_logits: np.ndarray, k: int) -> np.ndarray:
  """The shown image with each patch moved to the position its logits predict (argmax);
  positions no patch claims stay black. [S, S, C], logits [n, n]."""
  grid = (shown.shape[0] // k, shown.shape[1] // k)
  patches = patchify(shown, k)
  out = np.zeros_like(patches)
  out[np.argmax(order_logits, axis=-1)] = patches
  return unpatchify(out, k, grid)


# --------------------------------------------------------------------------- model
class PopAR(nn.Module):
  """The encoder's output tokens (one per k x k patch) and two token-wise linear heads:
  order logits [N, n, n] and patch pixels [N, n, k*k*C], both float32.

  Attributes:
    encoder: a `VisionTransformer` or `SwinTransformer` (called with return_features=True).
    patch: k, the encoder's output stride.
    channels: C of the reconstructed patches.
  """

  encoder: nn.Module
  patch: int
  channels: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = self.encoder(x, train=train, return_features=True)
    n = z.shape[1] * z.shape[2]
    z = z.reshape(z.shape[0], n, z.shape[-1])
    order = Dense(n, name="order_head")(z)
    appearance = Dense(self.patch ** 2 * self.channels, name="appearance_head")(z)
    return order.astype(jnp.float32), appearance.astype(jnp.float32)


def popar_losses(order_logits, appearance, order, target):
  """(L_pop, L_ar, order accuracy): sums over tokens, means over the batch."""
  ce = optax.softmax_cross_entropy_with_integer_labels(order_logits, order)
  l_pop = jnp.mean(jnp.sum(ce, axis=1))
  l_ar = jnp.mean(jnp.sum(jnp.square(target - appearance), axis=(1, 2)))
  accuracy = jnp.mean(jnp.argmax(order_logits, axis=-1) == order)
  return l_pop, l_ar, accuracy


def pretrain_loss(model: PopAR, order_weight: float):
  """The train-chunk loss: batch {"image" [B, S, S, C], "order" [B, n], "target" [B, n, k*k*C]};
  L = w L_pop + (1 - w) L_ar."""

  def fn(params, model_state, batch, rng):
    logits, appearance = model.apply({"params": params}, batch["image"], train=True,
                                     rngs={"dropout": rng})
    l_pop, l_ar, accuracy = popar_losses(logits, appearance, batch["order"], batch["target"])
    loss = order_weight * l_pop + (1.0 - order_weight) * l_ar
    return loss, (model_state, {"order_loss": l_pop, "appearance_loss": l_ar,
                                "order_accuracy": accuracy})

  return fn


OPTIMIZERS = ("sgd", "adamw")


def pretrain_optimizer(*, kind: str = "sgd", learning_rate: float, momentum: float,
                       total_steps: int, warmup_steps: int, weight_decay: float,
                       clip_norm: float, min_lr: float = 0.0) -> optax.GradientTransformation:
  """SGD (the paper's, lr 0.1) with momentum, or AdamW (0.9, 0.999) for short schedules;
  linear warm-up then cosine, weight decay on kernels only (the spec's assumptions: the
  paper gives only SGD and its rate), gradient clipping when `clip_norm` > 0."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1), end_value=min_lr)
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  if kind == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
  parts.append(optax.sgd(schedule, momentum=momentum or None))
  return optax.chain(*parts)
