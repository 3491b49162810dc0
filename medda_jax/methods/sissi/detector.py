"""The detector behind SISSI's small interface (`init`, `train_step`, `predict`).

Substitution: the paper trains a Faster R-CNN (ResNet-50, MS-COCO weights). There is no
maintained Faster R-CNN for Flax, so this is a compact single-class anchor-free detector in
the CenterNet style on the project's bottleneck ResNet (torchvision layout, `models/resnet.py`)
with a feature pyramid (top-down 2x upsampling + 1x1 laterals) merged down to stride 4:
  heat   [H/4, W/4, 1]  cell-centre heat map (sigmoid; penalty-reduced focal loss, Gaussian
                        targets)
  size   [H/4, W/4, 2]  log(width / 4), log(height / 4) at centres (L1)
  offset [H/4, W/4, 2]  sub-cell centre offset at centres (L1)
Decoding keeps 3x3 local maxima of the heat map (top `max_dets`), then score >= score_min
and NMS on the host, as the paper's detection thresholds. A two-stage detector can be added
later behind the same interface.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.engine.compile import compile_init
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.methods.sissi import paper
from medda_jax.models.resnet import ResNetStage, bn, conv

STRIDE = 4


class CenterFPN(nn.Module):
  stage_sizes: Sequence[int] = (3, 4, 6, 3)  # ResNet-50
  width: int = 64
  fpn_features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = (x.astype(jnp.float32) / 255.0 - 0.5).astype(self.dtype)  # uint8 RGB in
    x = conv(self.width, 7, self.dtype, "conv1", stride=2, padding=3)(x)
    x = nn.relu(bn(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = []
    for i, n in enumerate(self.stage_sizes):
      x = ResNetStage(n, self.width * 2 ** i, 1 if i == 0 else 2, self.dtype,
                      name=f"layer{i + 1}")(x, train)
      feats.append(x)
    f = self.fpn_features
    p = nn.Conv(f, (1, 1), dtype=self.dtype, name=f"lateral{len(feats)}")(feats[-1])
    for i in range(len(feats) - 2, -1, -1):  # top-down: C5 -> stride 4
      p = jnp.repeat(jnp.repeat(p, 2, axis=1), 2, axis=2)
      p = p + nn.Conv(f, (1, 1), dtype=self.dtype, name=f"lateral{i + 1}")(feats[i])
    p = nn.relu(nn.Conv(f, (3, 3), dtype=self.dtype, name="smooth")(p))

    def head(out, name, bias=0.0):
      h = nn.relu(nn.Conv(f, (3, 3), dtype=self.dtype, name=f"{name}_conv")(p))
      return nn.Conv(out, (1, 1), dtype=self.dtype, name=name,
                     bias_init=nn.initializers.constant(bias))(h).astype(jnp.float32)

    # heat bias: sigmoid = 0.1 at the start, as CenterNet (stable focal loss early on)
    return head(1, "heat", -2.19), head(2, "size"), head(2, "offset")


# --------------------------------------------------------------------------- targets
def targets(boxes_per_image: list[np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Dense CenterNet targets of a batch: heat [N, S, S, 1] (max of Gaussians with sigma
  from the box size), size / offset [N, S, S, 2] and their mask [N, S, S, 1]."""
  s = size // STRIDE
  n = len(boxes_per_image)
  heat = np.zeros((n, s, s, 1), np.float32)
  wh = np.zeros((n, s, s, 2), np.float32)
  off = np.zeros((n, s, s, 2), np.float32)
  mask = np.zeros((n, s, s, 1), np.float32)
  yy, xx = np.mgrid[0:s, 0:s]
  for k, boxes in enumerate(boxes_per_image):
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
      w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
      cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
      ix, iy = min(int(cx), s - 1), min(int(cy), s - 1)
      sigma = max(min(w, h) / STRIDE / 6.0, 0.5)
      g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma ** 2))
      heat[k, ..., 0] = np.maximum(heat[k, ..., 0], g)
      wh[k, iy, ix] = np.log([w / STRIDE, h / STRIDE])
      off[k, iy, ix] = (cx - ix, cy - iy)
      mask[k, iy, ix] = 1.0
  return {"heat": heat, "size": wh, "offset": off, "mask": mask}


def detection_loss(outputs, t) -> tuple[jax.Array, dict]:
  heat, wh, off = outputs
  p = jnp.clip(jax.nn.sigmoid(heat), 1e-4, 1 - 1e-4)
  pos = (t["heat"] >= 1.0 - 1e-6).astype(jnp.float32)
  focal = -(pos * (1 - p) ** 2 * jnp.log(p)
            + (1 - pos) * (1 - t["heat"]) ** 4 * p ** 2 * jnp.log(1 - p))
  n = jnp.maximum(t["mask"].sum(), 1.0)
  focal = focal.sum() / n
  size_l1 = (jnp.abs(wh - t["size"]) * t["mask"]).sum() / n
  off_l1 = (jnp.abs(off - t["offset"]) * t["mask"]).sum() / n
  return focal + size_l1 + off_l1, {"heat": focal, "size": size_l1, "offset": off_l1}


def decode(outputs, max_dets: int):
  """(boxes [N, K, 4], scores [N, K]) of the top `max_dets` local maxima."""
  heat, wh, off = outputs
  p = jax.nn.sigmoid(heat)[..., 0]
  peak = p == jax.lax.reduce_window(p, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
  n, s1, s2 = p.shape
  flat = jnp.where(peak, p, 0.0).reshape(n, -1)
  scores, idx = jax.lax.top_k(flat, min(max_dets, s1 * s2))
  iy, ix = idx // s2, idx % s2
  take = lambda a: jnp.take_along_axis(a.reshape(n, -1, 2), idx[..., None], axis=1)
  o, sz = take(off), jnp.exp(take(wh))
  cx, cy = (ix + o[..., 0]) * STRIDE, (iy + o[..., 1]) * STRIDE
  w, h = sz[..., 0] * STRIDE, sz[..., 1] * STRIDE
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), scores


# --------------------------------------------------------------------------- interface
class Detector:
  """init(seed) -> TrainState; train_step(state, batches) -> (state, metrics) over a chunk
  (leading steps axis, `engine.supervised.build_train_chunk`); predict(state, images) ->
  [(boxes, scores)] per image after the score threshold and NMS."""

  def __init__(self, *, stage_sizes, width, fpn_features, dtype, tx: optax.GradientTransformation,
               inner_loop: str, image_size: int, max_dets: int, score_min: float,
               nms_iou: float):
    self.model = CenterFPN(tuple(stage_sizes), width, fpn_features, dtype)
    self.tx, self.size = tx, image_size
    self.max_dets, self.score_min, self.nms_iou = max_dets, score_min, nms_iou
    self.train_step = build_train_chunk(self._loss, tx, inner_loop)
    self._init = compile_init(lambda k: self.model.init(
        k, jnp.zeros((1, image_size, image_size, 3), jnp.uint8), train=False))
    self._predict = jax.jit(lambda v, x: decode(self.model.apply(v, x, train=False),
                                                self.max_dets))
    self._eval_loss = jax.jit(lambda v, b: detection_loss(
        self.model.apply(v, b["images"], train=False), b)[0])

  def init(self, seed: int) -> TrainState:
    v = self._init(jax.random.PRNGKey(seed))
    return TrainState.create(v["params"], self.tx, v["batch_stats"],
                             rng=jax.random.PRNGKey(seed + 1))

  def _loss(self, params, model_state, batch, rng):
    del rng
    out, mutated = self.model.apply({"params": params, "batch_stats": model_state},
                                    batch["images"], train=True, mutable=["batch_stats"])
    loss, parts = detection_loss(out, batch)
    return loss, (mutated["batch_stats"], parts)

  @staticmethod
  def variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.model_state}

  def raw_predict(self, state, images: np.ndarray, batch: int = 16):
    """Top-k (boxes, scores) arrays of uint8 images [N, H, W, 3] (H, W multiples of 32)."""
    boxes, scores = [], []
    v = self.variables(state)
    for i in range(0, len(images), batch):
      chunk = images[i:i + batch]
      pad = batch - len(chunk)  # one compiled shape per image side
      x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      b, s = jax.device_get(self._predict(v, x))
      boxes.append(b[:len(chunk)])
      scores.append(s[:len(chunk)])
    return np.concatenate(boxes), np.concatenate(scores)

  def filter(self, boxes: np.ndarray, scores: np.ndarray, width: int, height: int):
    keep = scores >= self.score_min
    b = np.clip(boxes[keep], 0, [width, height, width, height])
    s = scores[keep]
    k = paper.nms(b, s, self.nms_iou)
    return b[k], s[k]

  def predict(self, state, images: np.ndarray, batch: int = 16):
    boxes, scores = self.raw_predict(state, images, batch)
    h, w = images.shape[1:3]
    return [self.filter(b, s, w, h) for b, s in zip(boxes, scores)]

  def loss(self, state, batch: dict) -> float:
    return float(self._eval_loss(self.variables(state), batch))
