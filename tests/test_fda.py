"""Fourier domain adaptation's pieces against plain transcriptions: the windows, the swap's
exact properties, SR-SIM (numpy loops, symmetry), the donor choice on hand-built similarity
tables, and MST's averaging of probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from medda_jax.methods.fda import paper

RNG = np.random.default_rng(0)
A = RNG.random((12, 16)).astype(np.float32)
B = RNG.random((12, 16)).astype(np.float32)


# ---------------------------------------------------------------- windows
def loop_circle(h, w, beta):
  m = np.zeros((h, w))
  for u in range(h):
    for v in range(w):
      if np.hypot(u - h // 2, v - w // 2) < beta * min(h, w):
        m[u, v] = 1
  return m


def loop_square(h, w, beta):
  b = int(np.floor(beta * min(h, w)))
  m = np.zeros((h, w))
  for u in range(h):
    for v in range(w):
      if abs(u - h // 2) <= b and abs(v - w // 2) <= b:
        m[u, v] = 1
  return m


@pytest.mark.parametrize("h, w", [(8, 8), (9, 12), (12, 7)])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.35])
def test_masks_match_loops(h, w, beta):
  np.testing.assert_array_equal(paper.circular_mask(h, w, beta), loop_circle(h, w, beta))
  np.testing.assert_array_equal(paper.square_mask(h, w, beta), loop_square(h, w, beta))


def test_circle_lies_inside_its_square():
  circle, square = paper.circular_mask(32, 32, 0.2), paper.square_mask(32, 32, 0.2)
  assert np.all(square >= circle) and square.sum() > circle.sum() > 1


# ---------------------------------------------------------------- the swap
def test_beta_zero_returns_the_normalised_target_magnitude():
  # circle: the window is empty at beta = 0 (distance 0 is not below radius 0)
  out = np.asarray(paper.fda_swap(A, B - 0.5, 0.0))
  np.testing.assert_allclose(out, np.abs(B - 0.5) / np.abs(B - 0.5).max(), atol=2e-6)


def test_square_window_at_beta_zero_swaps_the_mean():
  # the original FDA's square keeps the zero frequency at beta = 0: the target's mean
  # becomes the source's (output still normalised by its max)
  out = np.asarray(paper.fda_swap(A + 3.0, B, 0.0, window="square"))
  want = np.abs(B - B.mean() + (A + 3.0).mean())
  np.testing.assert_allclose(out, want / want.max(), atol=2e-6)


@pytest.mark.parametrize("window", paper.WINDOWS)
def test_self_swap_returns_the_image_up_to_normalisation(window):
  out = np.asarray(paper.fda_swap(B, B, 0.3, window=window))
  np.testing.assert_allclose(out, B / B.max(), atol=2e-6)


def test_swapped_spectrum_keeps_target_phase_and_outer_amplitude():
  """What is exactly true: the spectrum the swap inverts has the target's phase at every
  frequency, the target's amplitude outside the window and the source's inside. The
  restyled image is the magnitude of its inverse FFT, so the image's own spectrum need not
  have the target's phase (taking the magnitude changes the spectrum)."""
  beta = 0.2
  mask = paper.circular_mask(12, 16, beta).astype(bool)
  ft = np.fft.fftshift(np.fft.fft2(B.astype(np.float64)))
  fs = np.fft.fftshift(np.fft.fft2(A.astype(np.float64)))
  got = np.asarray(paper.swapped_spectrum(A, B, beta))
  np.testing.assert_allclose(np.abs(got)[~mask], np.abs(ft)[~mask], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.abs(got)[mask], np.abs(fs)[mask], rtol=1e-4, atol=1e-4)
  phase_gap = np.angle(got * np.conj(ft))  # wrapped difference
  assert np.max(np.abs(phase_gap)) < 1e-3
  # the restyled image equals |ifft| of that spectrum, normalised
  plain = np.abs(np.fft.ifft2(np.fft.ifftshift(
      np.where(mask, np.abs(fs), np.abs(ft)) * np.exp(1j * np.angle(ft)))))
  np.testing.assert_allclose(np.asarray(paper.fda_swap(A, B, beta)), plain / plain.max(),
                             atol=1e-5)


def test_restyle_slices_vmaps_over_donors_and_slices():
  donors = RNG.random((3, 2, 8, 8)).astype(np.float32)
  targets = RNG.random((3, 8, 8)).astype(np.float32)
  got = np.asarray(paper.restyle_slices(donors, targets, 0.25))
  for i in range(3):
    for j in range(2):
      np.testing.assert_allclose(got[i, j], paper.fda_swap(donors[i, j], targets[i], 0.25),
                                 atol=1e-6)


# ---------------------------------------------------------------- MST
def test_mst_averages_probabilities_not_logits():
  logits = np.array([[[[4.0]], [[-1.0]], [[-1.0]]]])  # [Z=1, n=3, 1, 1]
  p = 1 / (1 + np.exp(-np.array([4.0, -1.0, -1.0])))
  np.testing.assert_allclose(paper.mst_probability(logits)[0, 0, 0], p.mean())
  logits = np.array([[[[9.0]], [[-1.0]], [[-1.0]]]])
  assert paper.mst_mask(logits)[0, 0, 0]  # mean prob (1 + 2 * 0.269) / 3 = 0.51
  logits = np.array([[[[1.5]], [[-1.0]], [[-1.0]]]])
  assert not paper.mst_mask(logits)[0, 0, 0]  # mean prob 0.42
  # where averaging logits and averaging probabilities disagree: mean logit 1/3 > 0,
  # mean probability (0.998 + 2 * 0.076) / 3 = 0.38 < 0.5
  logits = np.array([[[[6.0]], [[-2.5]], [[-2.5]]]])
  assert np.mean([6.0, -2.5, -2.5]) > 0 and not paper.mst_mask(logits)[0, 0, 0]


# ---------------------------------------------------------------- SR-SIM
def np_correlate(x, k, pad):
  x = np.pad(x, pad)
  kh, kw = k.shape
  out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1))
  for r in range(out.shape[0]):
    for c in range(out.shape[1]):
      out[r, c] = np.sum(x[r:r + kh, c:c + kw] * k)
  return out


def np_srsim(x, y, kernel_size=3, sigma=3.8, gaussian_size=10):
  """SR-SIM written out from the paper / piq with numpy, at scale 1 (no resizing)."""
  eps = np.finfo(np.float32).eps

  def saliency(im):
    f = np.fft.fft2(im)
    la = np.log(np.abs(f) + eps)
    up, down = (kernel_size - 1) // 2, kernel_size // 2
    box = np.ones((kernel_size, kernel_size)) / kernel_size ** 2
    avg = np_correlate(np.pad(la, ((up, down), (up, down)), mode="edge"), box, 0)
    s = np.abs(np.fft.ifft2(np.exp(la - avg) * np.exp(1j * np.angle(f)))) ** 2
    c = np.arange(gaussian_size) - (gaussian_size - 1) / 2
    g = np.exp(-(c[None] ** 2 + c[:, None] ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    if gaussian_size % 2 == 0:
      g = np.pad(g, ((1, 0), (1, 0)))
    s = np_correlate(s, g, (g.shape[0] - 1) // 2)
    return (s - s.min()) / (s.max() - s.min() + eps)

  def grad(im):
    k = np.array([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]) / 16
    return np.hypot(np_correlate(im, k, 1), np_correlate(im, k.T, 1))

  x, y = 255.0 * x.astype(np.float64), 255.0 * y.astype(np.float64)
  sx, sy, gx, gy = saliency(x), saliency(y), grad(x), grad(y)
  w = np.maximum(sx, sy)
  svrs = (2 * sx * sy + 0.4) / (sx ** 2 + sy ** 2 + 0.4)
  gm = (2 * gx * gy + 225) / (gx ** 2 + gy ** 2 + 225)
  return np.sum(svrs * np.sqrt(gm) * w) / (np.sum(w) + eps)


def test_srsim_matches_a_numpy_transcription():
  kw = dict(kernel_size=3, sigma=3.8, gaussian_size=10)
  x, y = A[:, :12], B[:, :12] ** 2
  got = float(paper.srsim(x, y, scale=1.0, **kw))
  np.testing.assert_allclose(got, np_srsim(x, y, **kw), rtol=2e-4)
  got = float(paper.srsim(x, x * 0.5, scale=1.0, kernel_size=3, sigma=1.5, gaussian_size=5))
  np.testing.assert_allclose(
      got, np_srsim(x, x * 0.5, kernel_size=3, sigma=1.5, gaussian_size=5), rtol=2e-4)


def test_srsim_hand_values():
  # identical images: every similarity map is 1, so SR-SIM is 1 (up to eps)
  assert abs(float(paper.srsim(A, A, scale=1.0, gaussian_size=4)) - 1.0) < 1e-5
  # constant images have no gradients (except at the zero-padded border) and one
  # saliency value; hand value for two constants: interior gradient maps are 0 -> GM = 1
  sal, grad = paper.srsim_features(np.full((8, 8), 0.5, np.float32), scale=1.0,
                                   gaussian_size=4)
  np.testing.assert_allclose(np.asarray(grad)[1:-1, 1:-1], 0.0, atol=1e-5)
  # border: 0.5 * 255 * (3 + 10 + 3) / 16 = 127.5 on an edge's middle, for x
  np.testing.assert_allclose(np.asarray(grad)[3, 0], 127.5, rtol=1e-6)


def test_srsim_is_symmetric_and_ranks_similar_images_higher():
  x = RNG.random((32, 32)).astype(np.float32)
  y = np.clip(x + 0.05 * RNG.standard_normal((32, 32)), 0, 1).astype(np.float32)
  z = RNG.random((32, 32)).astype(np.float32)
  kw = dict(scale=0.5, gaussian_size=6)
  np.testing.assert_allclose(float(paper.srsim(x, z, **kw)), float(paper.srsim(z, x, **kw)),
                             rtol=1e-6)
  assert float(paper.srsim(x, y, **kw)) > float(paper.srsim(x, z, **kw))


def test_similarity_rows_gather_the_bank():
  imgs = RNG.random((5, 16, 16)).astype(np.float32)
  sal, grad = paper.srsim_features_batch(imgs, scale=1.0, gaussian_size=4)
  index = np.array([[[1, 2], [3, 4]]])  # target slice 0 against bank slices 1..4
  got = np.asarray(paper.similarity_rows(sal[:1], grad[:1], sal, grad, index))
  for k in range(2):
    for d in range(2):
      want = float(paper.srsim(imgs[0], imgs[index[0, k, d]], scale=1.0, gaussian_size=4))
      np.testing.assert_allclose(got[0, k, d], want, rtol=1e-5)


# ---------------------------------------------------------------- donors
def test_candidate_index_maps_relative_positions():
  slices, valid = paper.candidate_index(5, [5, 9], m=1)
  np.testing.assert_array_equal(slices[:, 0, 1], [0, 1, 2, 3, 4])  # same length: identity
  np.testing.assert_array_equal(slices[:, 1, 1], [0, 2, 4, 6, 8])
  assert not valid[0, 0, 0] and valid[0, 0, 1] and not valid[4, 1, 2]


TABLE = np.array([  # [Z=3 slices, K=3 scans, 2m+1 = 3 offsets], column 1 = corresponding
    [[0.1, 0.5, 0.9], [0.2, 0.6, 0.3], [np.nan, 0.4, 0.2]],
    [[0.3, 0.2, 0.1], [0.8, 0.7, 0.1], [0.3, 0.9, 0.0]],
    [[0.4, 0.8, np.nan], [0.1, 0.5, 0.2], [0.2, 0.3, 0.95]],
])


def test_donors_3d_take_the_best_scans_on_average():
  # mean of column 1 over slices: scan0 0.5, scan1 0.6, scan2 0.533
  d = paper.select_donors(TABLE, "3d", 2, 1)
  np.testing.assert_array_equal(d[:, :, 0], [[1, 2]] * 3)
  np.testing.assert_array_equal(d[:, :, 1], 0)


def test_donors_2d_per_slice():
  d = paper.select_donors(TABLE, "2d", 2, 1)
  np.testing.assert_array_equal(d[:, :, 0], [[1, 0], [2, 1], [0, 1]])
  np.testing.assert_array_equal(d[:, :, 1], 0)


def test_donors_25d_search_neighbours_too_and_skip_missing_slices():
  d = paper.select_donors(TABLE, "2.5d", 2, 1)
  np.testing.assert_array_equal(d[0], [[0, 1], [1, 0]])  # 0.9 (scan 0, +1), 0.6 (scan 1, 0)
  np.testing.assert_array_equal(d[1], [[2, 0], [1, -1]])
  np.testing.assert_array_equal(d[2], [[2, 1], [0, 0]])  # the NaN never wins


def test_more_donors_than_candidates_cycle():
  d = paper.select_donors(TABLE, "3d", 5, 1)
  np.testing.assert_array_equal(d[0, :, 0], [1, 2, 0, 1, 2])


def test_random_donors_are_seeded_and_cover_the_scans():
  d1 = paper.select_donors(TABLE, "none", 7, 1, np.random.default_rng(42))
  d2 = paper.select_donors(TABLE, "none", 7, 1, np.random.default_rng(42))
  np.testing.assert_array_equal(d1, d2)
  assert set(np.unique(d1[:, :, 0])) <= {0, 1, 2} and np.all(d1[:, :, 1] == 0)


def test_unknown_mode_and_window_raise():
  with pytest.raises(ValueError, match="donor mode"):
    paper.select_donors(TABLE, "4d", 2, 1)
  with pytest.raises(ValueError, match="window"):
    paper.window_mask("hexagon", 4, 4, 0.1)


# ---------------------------------------------------------------- beta selection
def test_beta_per_pair_and_averaged_over_pairs():
  from medda_jax.methods.fda import report
  runs = {report.val_key("s", "t1", 0): {"betas": [0.01, 0.02, 0.03],
                                         "sdice": {"mst": [0.5, 0.9, 0.6]}},
          report.val_key("s", "t2", 0): {"betas": [0.01, 0.02, 0.03],
                                         "sdice": {"mst": [0.8, 0.1, 0.7]}}}
  chosen = report.select_betas(runs, [("s", "t1"), ("s", "t2")], 0, ["mst"])
  assert chosen["pair"] == {"s->t1": {"mst": 0.02}, "s->t2": {"mst": 0.01}}
  # means over pairs 0.65, 0.5, 0.65: a tie, the smaller beta wins
  assert chosen["avg"] == {"mst": 0.01}
