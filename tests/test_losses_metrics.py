"""Segmentation losses (MetaMedSeg §2.3, eq. 4, Table 2) and per-slice metrics (§d) vs NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from medda_jax import losses, metrics


def _batch(seed: int, n: int = 3, h: int = 8, w: int = 8, p_fg: float = 0.3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(n, h, w, 1))
  targets = (rng.uniform(size=(n, h, w, 1)) < p_fg).astype(np.float64)
  return logits, targets


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_sums(logits, targets):
  """Σp·g, Σp, Σg, Σp(1−g), Σ(1−p)g over every pixel of the batch, with explicit loops."""
  p = _sigmoid(np.asarray(logits, np.float64)).ravel()
  g = np.asarray(targets, np.float64).ravel()
  pg = sp = sg = fp = fn = 0.0
  for pi, gi in zip(p, g):
    pg += pi * gi
    sp += pi
    sg += gi
    fp += pi * (1 - gi)
    fn += (1 - pi) * gi
  return pg, sp, sg, fp, fn


def np_soft_iou(logits, targets):
  pg, sp, sg, _, _ = _np_sums(logits, targets)
  return (pg + 1.0) / (sp + sg - pg + 1.0)


def np_bce(logits, targets, pos_weight=None):
  """torch BCEWithLogitsLoss(pos_weight=#neg/#pos): −[w·g·log p + (1−g)·log(1−p)], mean."""
  x = np.asarray(logits, np.float64).ravel()
  g = np.asarray(targets, np.float64).ravel()
  w = 1.0
  if pos_weight == "neg_over_pos":
    pos = g.sum()
    w = (g.size - pos) / pos if pos > 0 else 1.0
  total = 0.0
  for xi, gi in zip(x, g):
    log_p = -np.logaddexp(0.0, -xi)      # log σ(x)
    log_1mp = -np.logaddexp(0.0, xi)     # log(1 − σ(x))
    total += -(w * gi * log_p + (1 - gi) * log_1mp)
  return total / x.size


def np_dice_loss(logits, targets):
  pg, sp, sg, _, _ = _np_sums(logits, targets)
  return 1.0 - (2 * pg + 1.0) / (sp + sg + 1.0)


def np_tversky_loss(logits, targets, alpha=0.2, beta=0.8):
  tp, _, _, fp, fn = _np_sums(logits, targets)
  return 1.0 - (tp + 1.0) / (tp + alpha * fp + beta * fn + 1.0)


class LossesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0, 1, 2)
  def test_losses_match_numpy(self, seed):
    logits, targets = _batch(seed)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    iou = np_soft_iou(logits, targets)
    expected = {
        "soft_iou": iou,
        "iou": 1.0 - iou,
        "bce": np_bce(logits, targets),
        "bce_weighted": np_bce(logits, targets, "neg_over_pos"),
        "bce_log_dice": np_bce(logits, targets) - np.log(2 * iou / (iou + 1)),
        "dice": np_dice_loss(logits, targets),
        "tversky": np_tversky_loss(logits, targets),
        "focal_tversky": np_tversky_loss(logits, targets) ** 0.75,
    }
    fns = {
        "soft_iou": losses.soft_iou,
        "iou": losses.iou_loss,
        "bce": losses.bce,
        "bce_weighted": lambda a, b: losses.bce(a, b, pos_weight="neg_over_pos"),
        "bce_log_dice": losses.bce_log_dice,
        "dice": losses.dice_loss,
        "tversky": losses.tversky_loss,
        "focal_tversky": losses.focal_tversky_loss,
    }
    for name, fn in fns.items():
      out = self.variant(fn)(x, g)
      chex.assert_shape(out, ())
      chex.assert_type(out, jnp.float32)
      np.testing.assert_allclose(float(out), expected[name], rtol=1e-5, atol=1e-6, err_msg=name)

  def test_loss_table(self):
    logits, targets = _batch(3)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    self.assertEqual(set(losses.SEGMENTATION_LOSSES),
                     {"bce", "iou", "bce_log_dice", "dice", "tversky", "focal_tversky"})
    np.testing.assert_allclose(float(losses.SEGMENTATION_LOSSES["iou"](x, g)),
                               1 - np_soft_iou(logits, targets), rtol=1e-5)
    np.testing.assert_allclose(float(losses.SEGMENTATION_LOSSES["bce_log_dice"](x, g)),
                               np_bce(logits, targets)
                               - np.log(2 * np_soft_iou(logits, targets)
                                        / (np_soft_iou(logits, targets) + 1)), rtol=1e-5)

  def test_log_dice_term_is_dice_of_iou(self):
    # Eq. (4) writes the log-Dice through the smoothed IoU I = (Σpg + 1)/(Σp + Σg − Σpg + 1):
    # 2I/(I + 1) = (2Σpg + 2)/(Σp + Σg + 2), the Dice coefficient counted directly.
    # Hard masks first: |A| = |B| = 4, |A ∩ B| = 2, logits saturated so p is the mask.
    a = np.zeros((1, 4, 4, 1))
    b = np.zeros((1, 4, 4, 1))
    a[0, 0, :4] = 1
    b[0, 0, 2:4] = 1
    b[0, 1, :2] = 1
    inter = size_a = size_b = 0.0
    for ai, bi in zip(a.ravel(), b.ravel()):
      inter += ai * bi
      size_a += ai
      size_b += bi
    dice = (2 * inter + 2) / (size_a + size_b + 2)
    x = jnp.asarray(np.where(a > 0, 40.0, -40.0), jnp.float32)
    g = jnp.asarray(b, jnp.float32)
    np.testing.assert_allclose(float(losses.bce_log_dice(x, g) - losses.bce(x, g)),
                               -np.log(dice), rtol=1e-5)
    # Soft probabilities: the same identity with the sums of _np_sums.
    logits, targets = _batch(4)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    pg, sp, sg, _, _ = _np_sums(logits, targets)
    np.testing.assert_allclose(float(losses.bce_log_dice(x, g) - losses.bce(x, g)),
                               -np.log((2 * pg + 2) / (sp + sg + 2)), rtol=1e-4)

  def test_bce_pos_weight_differs_from_unweighted(self):
    logits, targets = _batch(5, p_fg=0.1)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    plain, weighted = float(losses.bce(x, g)), float(losses.bce(x, g, pos_weight="neg_over_pos"))
    self.assertGreater(weighted, plain * 1.5)  # rare positives get weight ≈ 9

  @chex.variants(with_jit=True, without_jit=True)
  def test_bce_pos_weight_all_negative_guard(self):
    logits, _ = _batch(6)
    x = jnp.asarray(logits, jnp.float32)
    g = jnp.zeros_like(x)
    out = self.variant(lambda a, b: losses.bce(a, b, pos_weight="neg_over_pos"))(x, g)
    self.assertTrue(np.isfinite(float(out)))
    np.testing.assert_allclose(float(out), np_bce(logits, np.zeros_like(logits)), rtol=1e-5)
    np.testing.assert_allclose(float(out), float(losses.bce(x, g)), rtol=1e-6)
    grads = jax.grad(lambda a: losses.bce(a, g, pos_weight="neg_over_pos"))(x)
    self.assertTrue(np.all(np.isfinite(np.asarray(grads))))

  def test_bce_invalid_pos_weight(self):
    logits, targets = _batch(7)
    with self.assertRaises(ValueError):
      losses.bce(jnp.asarray(logits), jnp.asarray(targets), pos_weight="balanced")

  def test_bce_is_stable_for_large_logits(self):
    x = jnp.array([[[[80.0]], [[-80.0]]]], jnp.float32).reshape(2, 1, 1, 1)
    g = jnp.array([0.0, 1.0]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(float(losses.bce(x, g)), 80.0, rtol=1e-5)

  def test_tversky_alpha_on_false_positives_beta_on_false_negatives(self):
    # all-foreground prediction on a mostly-background target: FP large, FN small
    h = 8
    logits = np.full((1, h, h, 1), 6.0)
    targets = np.zeros((1, h, h, 1))
    targets[0, :2, :2, 0] = 1.0
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    # alpha=1, beta=0: index = (TP+1)/(TP+FP+1)
    tp, _, _, fp, fn = _np_sums(logits, targets)
    np.testing.assert_allclose(float(losses.tversky_loss(x, g, alpha=1.0, beta=0.0)),
                               1 - (tp + 1) / (tp + fp + 1), rtol=1e-5)
    np.testing.assert_allclose(float(losses.tversky_loss(x, g, alpha=0.0, beta=1.0)),
                               1 - (tp + 1) / (tp + fn + 1), rtol=1e-5)
    # so with many FP the FP-weighted loss is the larger one
    self.assertGreater(float(losses.tversky_loss(x, g, alpha=0.8, beta=0.2)),
                       float(losses.tversky_loss(x, g, alpha=0.2, beta=0.8)))
    # alpha = beta = 0.5 is a Dice loss (with smoothing 2 once written as a Dice)
    _, sp, sg, _, _ = _np_sums(logits, targets)
    np.testing.assert_allclose(float(losses.tversky_loss(x, g, alpha=0.5, beta=0.5)),
                               1 - (2 * tp + 2) / (sp + sg + 2), rtol=1e-5)

  def test_sums_run_over_the_whole_batch_not_per_image(self):
    # image 0: large foreground predicted well; image 1: tiny foreground, missed
    h = 8
    logits = np.full((2, h, h, 1), -6.0)
    targets = np.zeros((2, h, h, 1))
    targets[0, :, :4, 0] = 1.0
    logits[0, :, :4, 0] = 6.0
    targets[1, 0, 0, 0] = 1.0
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    for fn, ref in ((losses.iou_loss, lambda a, b: 1 - np_soft_iou(a, b)),
                    (losses.dice_loss, np_dice_loss),
                    (losses.tversky_loss, np_tversky_loss)):
      whole = float(fn(x, g))
      per_image = np.mean([ref(logits[i:i + 1], targets[i:i + 1]) for i in range(2)])
      # float32 against float64: 1 - (a ratio near 0.96) keeps an absolute error of ~1e-6
      np.testing.assert_allclose(whole, ref(logits, targets), rtol=1e-5, atol=2e-6)
      self.assertGreater(abs(whole - per_image), 0.05, msg=fn.__name__)

  def test_iou_loss_gradient_matches_finite_differences(self):
    logits, targets = _batch(8, n=1, h=4, w=4)
    grad = np.asarray(jax.grad(losses.iou_loss)(jnp.asarray(logits, jnp.float32),
                                                jnp.asarray(targets, jnp.float32)))
    fd = np.zeros_like(logits)
    h = 1e-5
    for idx in np.ndindex(logits.shape):
      up, down = logits.copy(), logits.copy()
      up[idx] += h
      down[idx] -= h
      fd[idx] = ((1 - np_soft_iou(up, targets)) - (1 - np_soft_iou(down, targets))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-6)


def np_iou_per_slice(logits, targets):
  out = []
  for n in range(logits.shape[0]):
    inter = union = 0
    for idx in np.ndindex(logits.shape[1:]):
      p = 1.0 / (1.0 + np.exp(-logits[n][idx])) > 0.5
      g = targets[n][idx] > 0.5
      inter += int(p and g)
      union += int(p or g)
    out.append((inter + 1e-4) / (union + 1e-4))
  return np.array(out)


def np_dice_per_slice(logits, targets):
  out = []
  for n in range(logits.shape[0]):
    inter = total = 0
    for idx in np.ndindex(logits.shape[1:]):
      p = 1.0 / (1.0 + np.exp(-logits[n][idx])) > 0.5
      g = targets[n][idx] > 0.5
      inter += int(p and g)
      total += int(p) + int(g)
    out.append((2 * inter + 1e-4) / (total + 1e-4))
  return np.array(out)


class MetricsTest(chex.TestCase):

  def _cases(self):
    logits, targets = _batch(20, n=4)
    # slice 2: empty prediction and empty target -> 1; slice 3: empty prediction only -> ~0
    logits[2] = -5.0
    targets[2] = 0.0
    logits[3] = -5.0
    return logits, targets

  @chex.variants(with_jit=True, without_jit=True)
  def test_iou_and_dice_per_slice_match_numpy(self):
    logits, targets = self._cases()
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    iou = self.variant(metrics.binary_iou_per_slice)(x, g)
    dice = self.variant(metrics.dice_per_slice)(x, g)
    chex.assert_shape([iou, dice], (4,))
    np.testing.assert_allclose(np.asarray(iou), np_iou_per_slice(logits, targets), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dice), np_dice_per_slice(logits, targets), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(iou)[2], 1.0, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(dice)[2], 1.0, rtol=1e-7)
    self.assertLess(float(iou[3]), 1e-4)
    self.assertLess(float(dice[3]), 1e-4)
    self.assertTrue(np.all((np.asarray(iou)[:2] > 0) & (np.asarray(iou)[:2] < 1)))

  def test_threshold_is_strict(self):
    # sigmoid(0) = 0.5 is not > 0.5: a zero logit predicts background
    x = jnp.zeros((1, 2, 2, 1))
    g = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(np.asarray(metrics.binary_iou_per_slice(x, g)),
                               [1e-4 / (4 + 1e-4)], rtol=1e-5)

  def test_perfect_prediction(self):
    _, targets = _batch(21, n=2)
    logits = np.where(targets > 0.5, 3.0, -3.0)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    np.testing.assert_allclose(np.asarray(metrics.binary_iou_per_slice(x, g)), [1.0, 1.0])
    np.testing.assert_allclose(np.asarray(metrics.dice_per_slice(x, g)), [1.0, 1.0])

  def test_known_values(self):
    # P = {0, 1}, G = {1, 2}: IoU = 1/3, Dice = 1/2 (up to the 1e-4 smoothing)
    x = jnp.array([1.0, 1.0, -1.0, -1.0]).reshape(1, 2, 2, 1)
    g = jnp.array([0.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(float(metrics.binary_iou_per_slice(x, g)[0]),
                               (1 + 1e-4) / (3 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(float(metrics.dice_per_slice(x, g)[0]),
                               (2 + 1e-4) / (4 + 1e-4), rtol=1e-6)


if __name__ == "__main__":
  absltest.main()
