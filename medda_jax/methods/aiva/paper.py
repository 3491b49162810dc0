"""AIVA's algorithm as pure functions: the bottleneck (BNS) feature tap, the per-period
clustering and Hungarian matching of source and target clusters, the alignment loss, the
automatic lambda, and the optimizers (frozen decoder, SGD Nesterov with coupled weight decay).

Goodman, Kasten Serlin, Greenspan, Goldberger, "Unsupervised Site Adaptation by Intra-site
Variability Alignment" (DART 2022). Per period:

  Z = PCA_20([F_s; F_t]) (+ slice position)  ->  Y = tSNE_2D(Z)
  c_s = KMeans_k(Y_s);  c_t = KMeans_k(Y_t, init = source centres)
  pi = Hungarian(|mu_i^s - mu_j^t|^2)        nu_i = mean of F_s over source cluster i
and per step L = CE(f(x_s), y_s) + lambda * sum_i |mean{BNS(x_t): pi(c_t(x_t)) = i} - nu_i|^2.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSS_FORMS = ("paper", "macro_batch")
# The BNS tap in the residual U-Net: inside the 3rd bottleneck ResBlock, the BatchNorm of its
# second PreAct (before that PreAct's ReLU), i.e. the block's first conv, then BatchNorm.
TAP_PATH = ("bottleneck_res2", "PreAct_1", "BatchNorm_0")
# Trained during adaptation (spec (b)): the encoder up to the tap and the output path; the
# decoder and the rest of the 3rd bottleneck block stay as pre-trained.
TRAINABLE_PREFIXES = ("init_", "down1_", "down2_", "bottleneck_conv", "bottleneck_res0",
                      "bottleneck_res1", "out_")
TRAINABLE_PATHS = (("bottleneck_res2", "PreAct_0"),)


# --------------------------------------------------------------------------- feature tap
def _is_tap(module, method_name: str) -> bool:
  return method_name == "__call__" and tuple(module.scope.path) == TAP_PATH


def apply_with_bns(model, variables, images, train: bool):
  """(logits, BNS features [B, D] float32, new batch_stats): one forward pass with the tap
  read through Flax's `capture_intermediates` (train=True: batch statistics, and the
  running averages updated as in a training step)."""
  out, mutated = model.apply(variables, images, train=train, capture_intermediates=_is_tap,
                             mutable=["intermediates", "batch_stats"] if train else
                             ["intermediates"])
  node = mutated["intermediates"]
  for name in TAP_PATH:
    node = node[name]
  bns = node["__call__"][0]
  stats = mutated["batch_stats"] if train else variables["batch_stats"]
  return out, bns.reshape(bns.shape[0], -1).astype(jnp.float32), stats


# --------------------------------------------------------------------------- clustering
@dataclasses.dataclass(frozen=True)
class Clustering:
  """One period's clustering. Target cluster ids are already mapped through the matching:
  a target slice with id i is pulled towards nu[i], the mean of source cluster i."""

  source_ids: np.ndarray  # [Ns] int
  target_ids: np.ndarray  # [Nt] int, matched source cluster of each target slice
  target_raw_ids: np.ndarray  # [Nt] int, the target k-means cluster before matching
  matching: np.ndarray  # [k]: matching[j] = source cluster matched to target cluster j
  nu: np.ndarray  # [k, D] float32
  embedding: np.ndarray  # [Ns + Nt, 2] t-SNE (source rows first)
  source_centres: np.ndarray  # [k, 2]
  target_centres: np.ndarray  # [k, 2]


def hungarian_matching(source_centres: np.ndarray, target_centres: np.ndarray) -> np.ndarray:
  """matching[j] = the source cluster paired with target cluster j, minimising the summed
  mean squared distance of the paired 2-D centres."""
  from scipy.optimize import linear_sum_assignment
  cost = ((source_centres[:, None, :] - target_centres[None, :, :]) ** 2).mean(-1)
  rows, cols = linear_sum_assignment(cost)
  matching = np.empty(len(cols), np.int64)
  matching[cols] = rows
  return matching


def cluster_period(source_features: np.ndarray, target_features: np.ndarray, k: int, *,
                   source_position: np.ndarray | None = None,
                   target_position: np.ndarray | None = None, pca_dim: int = 20,
                   tsne_iterations: int = 1000, seed: int = 0) -> Clustering:
  """The joint PCA -> (slice position) -> t-SNE 2-D embedding of both sites' BNS features,
  k-means per site (the target's started from the source centres), the Hungarian matching
  and the high-dimensional source means nu. Positions (slice index / slices in the volume)
  are appended when given (the reference code's use_slice_num)."""
  from sklearn.cluster import KMeans
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  ns, nt = len(source_features), len(target_features)
  if min(ns, nt) < k:
    raise ValueError(f"{k} clusters need at least {k} slices of each site, got {ns} and {nt}")
  joint = np.concatenate([source_features, target_features]).astype(np.float64)
  z = PCA(min(pca_dim, joint.shape[0] - 1, joint.shape[1]), random_state=seed).fit_transform(joint)
  if source_position is not None:
    z = np.concatenate([z, np.concatenate([source_position, target_position])[:, None]], axis=1)
  perplexity = float(min(30.0, (len(joint) - 1) / 3.0))
  y = TSNE(2, learning_rate="auto", init="pca", perplexity=perplexity,
           max_iter=tsne_iterations, random_state=seed).fit_transform(z)
  source_km = KMeans(k, n_init=10, random_state=seed).fit(y[:ns])
  target_km = KMeans(k, init=source_km.cluster_centers_, n_init=1, random_state=seed).fit(y[ns:])
  matching = hungarian_matching(source_km.cluster_centers_, target_km.cluster_centers_)
  source_ids = source_km.labels_.astype(np.int64)
  nu = np.zeros((k, source_features.shape[1]), np.float64)
  np.add.at(nu, source_ids, source_features)
  nu /= np.maximum(np.bincount(source_ids, minlength=k), 1)[:, None]
  return Clustering(source_ids, matching[target_km.labels_], target_km.labels_.astype(np.int64),
                    matching, nu.astype(np.float32), y.astype(np.float32),
                    source_km.cluster_centers_.astype(np.float32),
                    target_km.cluster_centers_.astype(np.float32))


# --------------------------------------------------------------------------- loss
def alignment_loss(features, cluster_ids, nu, form: str = "paper"):
  """L_align of a batch of target BNS features [B, D] whose cluster ids [B] (the matched
  source cluster; -1 = no id) select the source means nu [k, D]; clusters absent from the
  batch add nothing.
    paper:        sum_i |mean_i - nu_i|^2                          (paper, per mini-batch)
    macro_batch:  sum_i n_i mean_elements((mean_i - nu_i)^2) / sum_i n_i   (reference code)"""
  k = nu.shape[0]
  valid = (cluster_ids >= 0).astype(features.dtype)
  ids = jnp.clip(cluster_ids, 0, k - 1)
  sums = jax.ops.segment_sum(features * valid[:, None], ids, num_segments=k)
  counts = jax.ops.segment_sum(valid, ids, num_segments=k)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  present = (counts > 0).astype(features.dtype)
  if form == "paper":
    return jnp.sum(present * jnp.sum((means - nu) ** 2, axis=-1))
  if form == "macro_batch":
    per_cluster = jnp.mean((means - nu) ** 2, axis=-1)
    return jnp.sum(counts * present * per_cluster) / jnp.maximum(jnp.sum(counts), 1.0)
  raise ValueError(f"alignment loss form must be one of {LOSS_FORMS}, got {form!r}")


def auto_lambda(first_losses, dist_loss_lambda: float, count: int = 6) -> float:
  """lambda = dist_loss_lambda / mean(first `count` positive alignment losses): the first
  scaled losses then average dist_loss_lambda (reference code; the paper's 1 / mean)."""
  positive = [float(x) for x in first_losses if float(x) > 0][:count]
  if not positive:
    return 0.0
  return float(dist_loss_lambda / np.mean(positive))


# --------------------------------------------------------------------------- optimizers
def is_trainable(path: tuple[str, ...]) -> bool:
  return path[0].startswith(TRAINABLE_PREFIXES) or any(
      path[:len(p)] == p for p in TRAINABLE_PATHS)


def trainable_labels(params) -> dict:
  """'train' / 'frozen' per parameter leaf (the labels of optax.multi_transform)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if is_trainable(tuple(p.key for p in path)) else "frozen", params)


def scale_by_schedule_in_state(base_lr: float, total_steps: int, power: float,
                               boundaries: tuple[int, int], factor: float
                               ) -> optax.GradientTransformation:
  """-lr(step) x update with lr = base (1 - step/total)^power x factor^(#boundaries
  passed), every number held in the state, so pre-training (polynomial) and fine-tuning
  (piecewise constant: power 0) of any length run the same compiled code."""

  def init(params):
    del params
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return {"count": jnp.zeros((), jnp.int32), "base": f32(base_lr), "total": f32(total_steps),
            "power": f32(power), "boundaries": jnp.asarray(boundaries, jnp.float32),
            "factor": f32(factor)}

  def update(updates, state, params=None):
    del params
    lr = schedule_value(state)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    return updates, dict(state, count=state["count"] + 1)

  return optax.GradientTransformation(init, update)


def schedule_value(state):
  step = state["count"].astype(jnp.float32)
  remaining = jnp.clip(1.0 - step / state["total"], 0.0, 1.0)
  # 0^0 = 1 keeps a piecewise-constant schedule (power 0) at its base after the end
  poly = jnp.where(state["power"] == 0, 1.0, remaining ** state["power"])
  drops = jnp.sum(step >= state["boundaries"])
  return state["base"] * poly * state["factor"] ** drops


def sgd_nesterov(base_lr: float, total_steps: int, *, power: float = 0.0,
                 boundaries: tuple[int, int] = (2 ** 30, 2 ** 30), factor: float = 1.0,
                 momentum: float = 0.9, weight_decay: float = 5e-4, params=None
                 ) -> optax.GradientTransformation:
  """torch SGD(momentum, nesterov, weight_decay): coupled weight decay added to the
  gradient before the momentum trace. With `params`, only the trainable layers
  (`is_trainable`) are updated; the others get zero updates."""
  tx = optax.chain(optax.add_decayed_weights(weight_decay),
                   optax.trace(decay=momentum, nesterov=True),
                   scale_by_schedule_in_state(base_lr, total_steps, power, boundaries, factor))
  if params is None:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               trainable_labels(params))


def segmentation_loss(logits, masks):
  """Softmax cross-entropy of 2-channel logits [B, H, W, 2] against masks [B, H, W, 1]."""
  labels = masks[..., 0].astype(jnp.int32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def adaptation_loss(model, form: str) -> Callable:
  """The fine-tuning loss of `engine.supervised.build_train_chunk`: model_state holds the
  BatchNorm statistics and the period's clustering ({"batch_stats", "nu", "lam",
  "target_cluster"}: slice -> matched cluster), which are inputs, never differentiated."""

  def loss_fn(params, model_state, batch, rng):
    del rng
    stats = model_state["batch_stats"]
    logits, mutated = model.apply({"params": params, "batch_stats": stats}, batch["images"],
                                  train=True, mutable=["batch_stats"])
    seg = segmentation_loss(logits, batch["masks"])
    _, bns, stats = apply_with_bns(model, {"params": params,
                                           "batch_stats": mutated["batch_stats"]},
                                   batch["target_images"], train=True)
    ids = model_state["target_cluster"][batch["target_slices"]]
    align = alignment_loss(bns, ids, model_state["nu"], form)
    loss = seg + model_state["lam"] * align
    return loss, (dict(model_state, batch_stats=stats), {"seg": seg, "align": align})

  return loss_fn
