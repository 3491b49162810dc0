"""Stain-AgLr units: colour deconvolution against scikit-image, the HED-light jitter (jnp
against its NumPy twin), the KL consistency and regeneration losses against plain formulas,
the networks' shapes, one step's loss against a plain recomputation, the plateau schedule,
AUC, and the per-lab loaders on small fixtures (with their one-line errors)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from skimage import color, data

from conftest import data_error
from medda_jax import metrics
from medda_jax.methods.stain_aglr import data as data_lib
from medda_jax.methods.stain_aglr import hed, paper

RANGES = hed.JitterRanges(sigma=0.05, bias=0.05, brightness=0.05, contrast=0.1, noise=0.02,
                          blur=0.8)


def ihc_crop():
  return (data.immunohistochemistry()[100:132, 200:232] / 255.0).astype(np.float32)


# --------------------------------------------------------------------------- HED
def test_rgb_to_hed_and_back_match_scikit_image():
  x = ihc_crop()
  np.testing.assert_allclose(hed.rgb_to_hed(jnp.asarray(x)), color.rgb2hed(x), atol=2e-5)
  stains = color.rgb2hed(x)
  np.testing.assert_allclose(hed.hed_to_rgb(jnp.asarray(stains, jnp.float32)),
                             color.hed2rgb(stains), atol=2e-5)
  np.testing.assert_allclose(hed.rgb_to_hed_np(x), color.rgb2hed(x), atol=2e-5)


def test_hed_round_trip_is_the_identity_on_stain_colours():
  # colours made of non-negative stain densities: what colour deconvolution can represent
  stains = np.random.default_rng(0).uniform(0.0, 0.2, (16, 16, 3))
  rgb = color.hed2rgb(stains).astype(np.float32)
  back = hed.hed_to_rgb(hed.rgb_to_hed(jnp.asarray(rgb)))
  np.testing.assert_allclose(back, rgb, atol=1e-4)
  np.testing.assert_allclose(hed.rgb_to_hed(jnp.asarray(rgb)), stains, atol=1e-3)


def test_zero_jitter_is_the_identity():
  stains = np.random.default_rng(1).uniform(0.0, 0.2, (8, 8, 3))
  rgb = jnp.asarray(color.hed2rgb(stains), jnp.float32)
  np.testing.assert_allclose(hed.apply(rgb, hed.zero_draw(rgb.shape)), rgb, atol=1e-4)
  zero = hed.JitterRanges(0.0, 0.0, 0.0, 0.0, 0.0)
  out = hed.jitter_batch(jax.random.PRNGKey(0), jnp.stack([rgb, rgb]), zero)
  np.testing.assert_allclose(out, jnp.stack([rgb, rgb]), atol=1e-4)


def test_numpy_twin_equals_the_jnp_jitter_for_the_same_draws():
  x = ihc_crop()
  rng = np.random.default_rng(2)
  for _ in range(3):
    d = hed.draw_np(rng, x.shape, RANGES)
    r = RANGES.blur_radius
    np.testing.assert_allclose(hed.apply(jnp.asarray(x), hed.JitterDraw(*map(jnp.asarray, d)), r),
                               hed.apply_np(x, d, r), atol=1e-5)
  # the vmapped batch jitter = the twin applied patch by patch with the batch's own draws
  batch = np.stack([x, x[::-1], x[:, ::-1]])
  key = jax.random.PRNGKey(3)
  got = hed.jitter_batch(key, jnp.asarray(batch), RANGES)
  for i, k in enumerate(jax.random.split(key, 3)):
    d = jax.device_get(hed.draw(k, x.shape, RANGES))
    np.testing.assert_allclose(got[i], hed.apply_np(batch[i], d, RANGES.blur_radius), atol=1e-5)
  assert float(jnp.abs(got[0] - batch[0]).max()) > 1e-3  # the jitter changed something


def test_blur_is_scipys_gaussian_filter():
  from scipy import ndimage
  x = ihc_crop()
  zero = jax.device_get(hed.zero_draw(x.shape))
  plain = hed.apply_np(x, zero)  # the HED round trip alone
  for sigma in (0.3, 0.8):
    d = zero._replace(blur=np.float32(sigma))
    radius = hed.JitterRanges(blur=0.8).blur_radius
    want = ndimage.gaussian_filter(plain.astype(np.float64), (sigma, sigma, 0), mode="reflect",
                                   truncate=radius / sigma)
    np.testing.assert_allclose(hed.apply_np(x, d, radius), want, atol=1e-5)
    np.testing.assert_allclose(hed.apply(jnp.asarray(x), hed.JitterDraw(*map(jnp.asarray, d)),
                                         radius), want, atol=1e-5)


def test_morphology_zooms_about_the_centre_and_deforms_only_the_geometry():
  from scipy import ndimage
  x = np.stack([ihc_crop(), ihc_crop()[::-1]])
  off = hed.MorphologyRanges()
  assert hed.morphology_np(x, np.random.default_rng(0), off) is x
  zoom_only = hed.MorphologyRanges(scale=0.2)
  got = hed.morphology_np(x, np.random.default_rng(1), zoom_only)
  rng = np.random.default_rng(1)
  for i in range(2):
    zoom = 1 + rng.uniform(-0.2, 0.2)
    rng.uniform(0, 0), rng.uniform(9, 11), rng.uniform(-1, 1, (64, 32))  # the unused draws
    centre = (np.array(x.shape[1:3]) - 1) / 2
    want = np.stack([ndimage.affine_transform(x[i, ..., ch], np.eye(2) / zoom,
                                              centre - centre / zoom, order=1, mode="reflect")
                     for ch in range(3)], -1)
    np.testing.assert_allclose(got[i], want, atol=1e-5)
  # Elastic deformation moves pixels, it does not change colours: a flat patch stays flat.
  elastic = hed.MorphologyRanges(alpha=(80.0, 120.0))
  flat = np.full((1, 32, 32, 3), 0.4, np.float32)
  np.testing.assert_allclose(hed.morphology_np(flat, np.random.default_rng(2), elastic), flat,
                             atol=1e-6)
  moved = hed.morphology_np(x, np.random.default_rng(2), elastic)
  assert moved.shape == x.shape and float(np.abs(moved - x).max()) > 0.05


def test_hed_jitter_scales_and_shifts_the_stain_densities():
  # with brightness/contrast/noise off: HED(out) = HED(x) * (1 + sigma) + bias where the
  # result stays representable (no clipping)
  stains = np.random.default_rng(4).uniform(0.05, 0.15, (8, 8, 3))
  rgb = color.hed2rgb(stains).astype(np.float32)
  d = hed.JitterDraw(np.array([0.04, -0.03, 0.02], np.float32),
                     np.array([0.01, -0.02, 0.03], np.float32), np.float32(0), np.float32(0),
                     np.zeros(rgb.shape, np.float32), np.float32(0))
  out = hed.apply_np(rgb, d)
  np.testing.assert_allclose(color.rgb2hed(out), stains * (1 + d.sigma) + d.bias, atol=2e-3)


# --------------------------------------------------------------------------- losses
def plain_kl(logits_p, logits_q):
  total = 0.0
  for lp, lq in zip(np.asarray(logits_p, np.float64), np.asarray(logits_q, np.float64)):
    p = np.exp(lp) / np.exp(lp).sum()
    q = np.exp(lq) / np.exp(lq).sum()
    total += sum(p[c] * np.log(p[c] / q[c]) for c in range(len(p)))
  return total / len(logits_p)


def test_kl_is_zero_for_identical_inputs_and_runs_raw_to_altered():
  a = np.array([[2.0, -1.0], [0.3, 0.1], [-4.0, 3.0]], np.float32)
  b = np.array([[0.0, 0.5], [1.0, -2.0], [1.0, 1.0]], np.float32)
  assert float(paper.kl_consistency(a, a)) == pytest.approx(0.0, abs=1e-7)
  got = float(paper.kl_consistency(a, b))
  assert got == pytest.approx(plain_kl(a, b), rel=1e-5)
  assert abs(got - plain_kl(b, a)) > 1e-2  # the direction matters and is KL(p || p_hat)


def test_regeneration_loss_is_squared_error_summed_over_rgb_per_pixel():
  rng = np.random.default_rng(5)
  a, b = rng.random((2, 4, 4, 3)), rng.random((2, 4, 4, 3))
  plain = np.mean([sum((a[n, i, j, c] - b[n, i, j, c]) ** 2 for c in range(3))
                   for n in range(2) for i in range(4) for j in range(4)])
  assert float(paper.regeneration_loss(a, b)) == pytest.approx(plain, rel=1e-5)


# --------------------------------------------------------------------------- networks
NET = paper.StainAgLrNet((4, 4, 4, 4, 4), (4, 4, 4, 4, 4), hidden=8)


def init(net=NET, side=32, shapes_only=False):
  x = jnp.zeros((1, side, side, 3))
  fn = lambda: net.init(jax.random.PRNGKey(0), x, x, False,
                        method=paper.StainAgLrNet.train_outputs)
  return jax.eval_shape(fn) if shapes_only else jax.jit(fn)()


def test_generator_regenerates_the_input_shape_without_skips_by_default():
  v = init()
  x = jnp.asarray(np.random.default_rng(6).random((2, 32, 32, 3)), jnp.float32)
  out, logits = jax.jit(lambda v, x: (NET.apply(v, x, False, method=paper.StainAgLrNet.regenerate),
                                        NET.apply(v, x, train=False)))(v, x)
  assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert logits.shape == (2, 2)
  # no skips: the decoder's first conv sees only the 4 channels of the 1x1 feature map
  first = v["params"]["m_gen"]["ConvBlock_0"]["Conv_0"]["kernel"]
  assert first.shape[2] == 4
  skipped = paper.StainAgLrNet((4, 4, 4, 4, 4), (4, 4, 4, 4, 4), hidden=8, gen_skips=True)
  shapes = init(skipped, shapes_only=True)
  assert shapes["params"]["m_gen"]["ConvBlock_0"]["Conv_0"]["kernel"].shape[2] == 8


def test_paper_architecture_shapes():
  net = paper.StainAgLrNet()  # the paper's widths, appendix Table 3
  shapes = init(net, 256, shapes_only=True)
  z = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((1, 256, 256, 3)), False,
                                          method=lambda m, x, t: m.m_ft(x, t)), shapes)
  assert z.shape == (1, 8, 8, 512)
  assert shapes["params"]["m_cls"]["Dense_0"]["kernel"].shape == (512, 256)
  assert shapes["params"]["m_cls"]["Dense_1"]["kernel"].shape == (256, 2)


@pytest.mark.parametrize("variant", ["vanilla", "stain_aglr"])
def test_one_step_loss_against_a_plain_recomputation(variant):
  v = init()
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.random((3, 32, 32, 3)), jnp.float32)
  y = jnp.array([0, 1, 1])
  weights = paper.weights_of(paper.VARIANTS[variant], 0.1, 10.0)
  loss_fn = paper.stain_aglr_loss(NET, RANGES, detach_raw_in_kl=False)
  key = jax.random.PRNGKey(8)
  loss, (state, m) = loss_fn(v["params"], {"batch_stats": v["batch_stats"], "weights": weights},
                             {"image": x, "label": y}, key)
  # the same computation written out: the twin from the same key, one forward pass
  jitter_key, dropout_key = jax.random.split(key)
  x_hat = hed.jitter_batch(jitter_key, x, RANGES) if variant != "vanilla" else x
  (lo, lo_hat, regen), _ = NET.apply(v, x, x_hat, True, method=paper.StainAgLrNet.train_outputs,
                                     rngs={"dropout": dropout_key}, mutable=["batch_stats"])
  lo, lo_hat, regen = map(np.asarray, (lo, lo_hat, regen))

  def ce(logits):
    return np.mean([np.log(np.exp(l).sum()) - l[t] for l, t in zip(logits, np.asarray(y))])

  want_ce = (ce(lo) + ce(lo_hat)) / 2
  want_reg = np.mean(np.sum((regen - np.asarray(x)) ** 2, -1))
  want_cons = plain_kl(lo, lo_hat)
  lam_reg, lam_cons = (0.0, 0.0) if variant == "vanilla" else (0.1, 10.0)
  assert float(m["ce"]) == pytest.approx(want_ce, rel=1e-4)
  assert float(m["reg"]) == pytest.approx(want_reg, rel=1e-4)
  assert float(m["cons"]) == pytest.approx(want_cons, rel=1e-3, abs=1e-7)
  assert float(loss) == pytest.approx(want_ce + lam_reg * want_reg + lam_cons * want_cons,
                                      rel=1e-4)
  assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(v["batch_stats"])


# --------------------------------------------------------------------------- schedule
def test_plateau_schedule_on_a_hand_made_validation_sequence():
  p = paper.Plateau(lr=1e-2, patience=2)
  seq = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.81, 0.79, 0.9, 0.9, 0.9, 0.9]
  want_lr = [1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5]
  want_best = [True, True, False, False, True, False, False, True, False, False]
  for i, loss in enumerate(seq):
    improved, stop = p.update(loss)
    assert improved == want_best[i] and p.lr == pytest.approx(want_lr[i]), i
    if stop:
      break
  assert i == 9 and stop and p.best == 0.79  # stopped when the lr dropped to 1e-5
  resumed = paper.Plateau(**paper.Plateau(lr=1e-2, patience=2, best=0.5, waited=1).state())
  assert resumed.update(0.6) == (False, False) and resumed.lr == pytest.approx(1e-3)


def test_auc_matches_a_pairwise_count():
  rng = np.random.default_rng(9)
  y = rng.integers(0, 2, 50)
  s = rng.random(50) + 0.3 * y
  s[:5] = s[5:10]  # ties count one half
  pos, neg = s[y == 1], s[y == 0]
  plain = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
  assert metrics.roc_auc(y, s) == pytest.approx(plain)


# --------------------------------------------------------------------------- loaders
def write_png(path, value):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_folders_layout_reads_labs_from_the_first_folder(tmp_path):
  rows = ["path,label"]
  for lab in ("a", "b"):
    for i in range(3):
      write_png(tmp_path / lab / f"p{i}.png", 40 * i)
      rows.append(f"{lab}/p{i}.png,{i % 2}")
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  t = data_lib.load(tmp_path, "folders", "mine")
  assert list(t.labs) == ["a"] * 3 + ["b"] * 3 and list(t.labels) == [0, 1, 0] * 2
  image, label = data_lib.PatchSource(t, 16)[1]
  assert image.shape == (16, 16, 3) and label == 1
  assert image.max() == pytest.approx(40 / 255, abs=1e-6)
  assert "lab 'c' has no patches" in data_error(lambda: t.of_lab("c"))
  train, val = data_lib.split(t.of_lab("a"), 0.34, 0)
  assert len(val) == 1 and sorted(np.concatenate([train, val])) == [0, 1, 2]


def test_camelyon17_wilds_layout(tmp_path):
  rows = ["patient,node,x_coord,y_coord,tumor,slide,center,split"]
  for k, (p, n, center, tumor) in enumerate([(4, 4, 0, 1), (4, 4, 0, 0), (10, 0, 1, 1)]):
    write_png(tmp_path / "patches" / f"patient_{p:03d}_node_{n}" /
              f"patch_patient_{p:03d}_node_{n}_x_{k}_y_{2 * k}.png", 10)
    rows.append(f"{p},{n},{k},{2 * k},{tumor},{k},{center},0")
  (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
  t = data_lib.load(tmp_path, "camelyon17", "camelyon17")
  assert list(t.labs) == ["center_0", "center_0", "center_1"] and list(t.labels) == [1, 0, 1]
  (tmp_path / "patches" / "patient_010_node_0" / "patch_patient_010_node_0_x_2_y_4.png").unlink()
  msg = data_error(lambda: data_lib.load(tmp_path, "camelyon17", "camelyon17"))
  assert "line 4" in msg and "patch_patient_010_node_0_x_2_y_4.png" in msg


def test_tupac_layout_maps_cases_to_centres(tmp_path):
  rows = ["path,label,case"]
  for i, case in enumerate((1, 23, 24, 73)):
    write_png(tmp_path / f"p{i}.png", 0)
    rows.append(f"p{i}.png,{i % 2},{case}")
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  t = data_lib.load(tmp_path, "tupac", "tupac")
  assert list(t.labs) == ["centre_1", "centre_1", "centre_2", "centre_3"]


def test_loader_errors_are_one_line(tmp_path):
  write_png(tmp_path / "a" / "p.png", 0)
  (tmp_path / "labels.csv").write_text("path,class\na/p.png,1\n")
  msg = data_error(lambda: data_lib.load(tmp_path, "folders", "mine"), with_layout=True)
  assert "lacks column(s) ['label']" in msg
  (tmp_path / "labels.csv").write_text("path,label\na/p.png,1\na/gone.png,0\n")
  msg = data_error(lambda: data_lib.load(tmp_path, "folders", "mine"))
  assert "line 3" in msg and "gone.png" in msg and "does not exist" in msg
  (tmp_path / "labels.csv").write_text("path,label\na/p.png,2\n")
  assert "is not 0 or 1" in data_error(lambda: data_lib.load(tmp_path, "folders", "mine"))
  (tmp_path / "labels.csv").write_text("path,label,case\na/p.png,1,80\n")
  assert "not a TUPAC16 case" in data_error(lambda: data_lib.load(tmp_path, "tupac", "t"))


def test_training_batches_are_streamed_class_balanced_and_repeatable(tmp_path):
  from medda_jax.config_utils import load_config
  from medda_jax.methods.stain_aglr.experiment import Experiment
  rows = ["path,label"]
  for lab in ("lab_a", "lab_b"):
    for i in range(20):
      write_png(tmp_path / "d" / lab / f"{i}.png", 10 * i)
      rows.append(f"{lab}/{i}.png,{int(i < 4)}")  # 4 positives, 16 negatives per lab
  (tmp_path / "d" / "labels.csv").write_text("\n".join(rows) + "\n")
  c = load_config("configs/stain_aglr.py:smoke")
  c.data.source, c.data.user, c.data.train_lab = "none", (f"mine={tmp_path / 'd'}",), "lab_a"
  c.train.balanced, c.train.batch_size = True, 8
  exp = Experiment(c, tmp_path / "w")
  assert exp.test_labs == ["lab_b"] and len(exp.train_idx) == 16 and len(exp.val_idx) == 4
  make = exp.batches(seed=3, stain_aug=True)
  b = make(0)
  assert b["image"].shape == (4, 8, 32, 32, 3) and b["label"].shape == (4, 8)
  assert (b["label"].sum(axis=1) == 4).all()  # half of every batch is the rare class
  np.testing.assert_array_equal(make(0)["image"], b["image"])  # a pure function of the call
  assert not np.array_equal(make(1)["label"], b["label"]) or not np.array_equal(
      make(1)["image"], b["image"])
