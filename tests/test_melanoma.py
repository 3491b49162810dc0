"""Fair melanoma: the ITA labeller (hair removal, lightest patch, plain atan, type mapping),
the GRL, each update rule against a hand-written reference, class weights, per-group AUC,
the loaders on written fixtures, and the ResNeXt trunk."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from conftest import abstract_variables, data_error, param_count
from medda_jax.methods.melanoma_fairness import data, experiment, ita, paper


def _skin_image(ita_deg, size=256):
  lab = np.broadcast_to(data.skin_lab(ita_deg), (size, size, 3))
  return (lab2rgb(lab) * 255).round().astype(np.uint8)


def _plain_type(value):
  if not math.isfinite(value):
    return -1
  if value > 55:
    return 1
  if value > 41:
    return 2
  if value > 28:
    return 3
  if value > 19:
    return 4
  if value > 10:
    return 5
  return 6


# --------------------------------------------------------------------------- labeller
def test_hair_removal_paints_over_synthetic_hairs():
  import cv2
  clean = _skin_image(35.0)
  hairy = clean.copy()
  for y in (40, 120, 200):
    cv2.line(hairy, (0, y), (255, y + 30), (30, 20, 15), 2)
  hair = np.any(hairy != clean, axis=-1)
  before = np.abs(hairy.astype(float) - clean)[hair].mean()
  after = np.abs(ita.remove_hair(hairy).astype(float) - clean)[hair].mean()
  assert before > 60 and after < 0.1 * before
  # skin without hair is left as it is
  assert np.abs(ita.remove_hair(clean).astype(float) - clean).max() <= 1


def test_the_lightest_patch_gives_the_label():
  # each patch painted in its own skin colour; the rest of the image much darker
  itas = [20.0, 62.0, 5.0, 33.0, 45.0, -20.0, 15.0, 25.0]
  img = _skin_image(-40.0)
  for (r, c), value in zip(ita.CORNERS, itas):
    img[r:r + 20, c:c + 20] = _skin_image(value, 20)
  got_ita, got_type = ita.label_batch(img[None], hair_removal=False)
  lab = rgb2lab(img)
  per_patch = []  # the plain way: a loop over patches and math.atan
  for r, c in ita.CORNERS:
    patch = lab[r:r + 20, c:c + 20]
    per_patch.append(math.atan((patch[..., 0].mean() - 50) / patch[..., 2].mean()) * 180 / math.pi)
  assert got_ita[0] == pytest.approx(max(per_patch), abs=1e-9)
  assert got_ita[0] == pytest.approx(62.0, abs=1.0)  # the colour's known ITA, after 8-bit RGB
  assert got_type[0] == 1


def test_labels_of_a_batch_match_one_image_at_a_time():
  rng = np.random.default_rng(0)
  batch = np.stack([data.synth_image(rng, t, t % 2 == 0, 256, 2)[0] for t in range(1, 7)])
  itas, types = ita.label_batch(batch)
  for k, img in enumerate(batch):
    one, t = ita.label_batch(img[None])
    assert itas[k] == pytest.approx(one[0]) and types[k] == t[0]


@pytest.mark.parametrize("value", [70.0, 55.0, 55.001, 41.0, 40.9, 28.0, 28.5, 19.0, 19.2,
                                   10.0, 10.01, -45.0, float("nan")])
def test_type_mapping_matches_the_thresholds(value):
  assert ita.fitzpatrick_type(np.array([value]))[0] == _plain_type(value)


def test_plain_atan_and_the_failure_label():
  # L* = 60 with b* = -10: atan gives -45 deg (type 6); atan2 would give 135 deg
  assert ita.ita_of(60.0, -10.0) == pytest.approx(-45.0)
  assert ita.fitzpatrick_type(ita.ita_of(60.0, -10.0)) == 6
  assert np.isnan(ita.ita_of(60.0, 0.0)) and ita.fitzpatrick_type(ita.ita_of(60.0, 0.0)) == -1
  # a patch layout for 256x256 images only, unless asked to rescale
  lab = np.zeros((1, 128, 128, 3))
  with pytest.raises(ValueError, match="256x256"):
    ita.patch_means(lab)
  assert ita.patch_means(lab + [70.0, 0.0, 10.0], rescale=True)[0, :, 0] == pytest.approx(70.0)


def test_known_ita_of_synthetic_skin_is_recovered():
  rng = np.random.default_rng(1)
  for skin_type in range(1, 7):
    img, known = data.synth_image(rng, skin_type, False, 256, 3)
    got, t = ita.label_batch(img[None])
    assert got[0] == pytest.approx(known, abs=4.0)
    assert abs(t[0] - skin_type) <= 1


# --------------------------------------------------------------------------- GRL
def test_gradient_reversal_is_identity_forward_and_minus_a_tenth_backward():
  x = jnp.array([1.0, -2.0, 3.0])
  y, vjp = jax.vjp(lambda v: paper.grad_reverse(v, 0.1), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_allclose(vjp(jnp.array([1.0, 2.0, -4.0]))[0], [-0.1, -0.2, 0.4])


# --------------------------------------------------------------------------- losses
def test_losses_against_numpy_loops():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 3))
  labels = np.array([0, 2, -1, 1, 2])
  weights = paper.class_weights(np.array([0, 0, 0, 1, 2, 2]), 3)
  num = den = 0.0
  ent = 0.0
  for n in range(5):
    p = np.exp(logits[n]) / np.exp(logits[n]).sum()
    ent += sum(pk * math.log(pk) for pk in p) / 5
    if labels[n] >= 0:
      num += weights[labels[n]] * -math.log(p[labels[n]])
      den += weights[labels[n]]
  assert float(paper.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                            jnp.asarray(weights))) == pytest.approx(num / den, 1e-5)
  assert float(paper.negative_entropy(jnp.asarray(logits))) == pytest.approx(ent, 1e-5)
  u = np.full((5, 3), 1 / 3)
  conf = -sum(u[n, k] * math.log(np.exp(logits[n, k]) / np.exp(logits[n]).sum())
              for n in range(5) for k in range(3)) / 5
  assert float(paper.confusion_loss(jnp.asarray(logits), jnp.asarray(u))) == pytest.approx(conf, 1e-5)


def test_class_weights_are_inverse_training_frequencies():
  # frequencies 3/4, 1/4 -> inverse 4/3, 4 -> normalised 1/4, 3/4; an absent class gets 0
  np.testing.assert_allclose(paper.class_weights(np.array([0, 0, 0, 1, -1]), 3),
                             [0.25, 0.75, 0.0], rtol=1e-6)


# --------------------------------------------------------------------------- update rules
class _Encoder(nn.Module):
  """A stand-in trunk with BatchNorm (the rules do not depend on the trunk; this one
  compiles in a moment)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(6)(x.reshape(x.shape[0], -1))
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


def _tiny():
  net = paper.Network(_Encoder(), paper.MainHead(dropout=0.0), paper.BiasHead(2))
  params, stats = net.init(jax.random.PRNGKey(0), 16)
  rng = np.random.default_rng(0)
  batch = {"images": jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32),
           "labels": jnp.array([0, 1, 1, 0]), "bias": jnp.array([0, 1, 0, -1])}
  return net, params, stats, batch


def _sgd(p, buf, g, lr, m=0.9):
  """torch.optim.SGD(momentum=m): buf = m buf + g; p -= lr buf."""
  buf = jax.tree.map(lambda b, gg: m * b + gg, buf, g)
  return jax.tree.map(lambda pp, b: pp - lr * b, p, buf), buf


@pytest.mark.parametrize("method", ["baseline", "lntl", "lntl_star", "tabe", "clgr"])
def test_update_rules_match_sequential_updates_written_out(method):
  net, params, stats, batch = _tiny()
  hp = paper.hyper_for(method, 0.05, 0.04, 0.3, 0.2)
  w = jnp.array([0.3, 0.7])
  step = jax.jit(paper.update_rule(method, net, hp, w))
  state = paper.FairState.create(params, stats, paper.optimizers(hp), jax.random.PRNGKey(1))
  for _ in range(2):  # two steps: the momentum buffers carry over
    state, metrics = step(state, batch)

  zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731

  @jax.jit  # the reference, compiled whole (op-by-op dispatch would be slow)
  def reference(p, s):
    buf_f, buf_g, buf_h, buf_c = zeros(p["f"]), zeros(p["g"]), zeros(p["h"]), zeros(p["f"])
    for _ in range(2):
      def loss1(f, g):
        z, new = net.features(f, s, batch["images"], True)
        main = paper.bce_with_logits(net.melanoma_logit(g, z), batch["labels"])
        q = jax.nn.softmax(net.bias_logits(p["h"], z))
        if method in ("tabe", "clgr"):
          main = main + hp.tabe_alpha * -jnp.sum(jnp.log(q) / 2) / 4
        elif method != "baseline":
          main = main + hp.lntl_lambda * jnp.mean(jnp.sum(q * jnp.log(q), -1))
        return main, new
      (_, s1), (gf, gg) = jax.value_and_grad(loss1, argnums=(0, 1), has_aux=True)(p["f"], p["g"])
      f, buf_f = _sgd(p["f"], buf_f, gf, hp.main_lr)
      g, buf_g = _sgd(p["g"], buf_g, gg, hp.main_lr)
      if method in ("tabe", "clgr"):
        f, buf_c = _sgd(f, buf_c, gf, hp.confusion_lr)
      h, s = p["h"], s1
      if method != "baseline":
        def loss2(f2, h2):
          z, new = net.features(f2, s1, batch["images"], True)
          return paper.weighted_cross_entropy(net.bias_logits(h2, z), batch["bias"], w), new
        (_, s), (gf2, gh) = jax.value_and_grad(loss2, argnums=(0, 1), has_aux=True)(f, h)
        # GRL: the encoder receives -0.1 x the bias loss's gradient; without it, none
        gf2 = jax.tree.map(lambda t: -0.1 * t, gf2) if method in ("lntl", "clgr") else zeros(gf2)
        f, buf_f = _sgd(f, buf_f, gf2, hp.main_lr)
        g, buf_g = _sgd(g, buf_g, zeros(g), hp.main_lr)  # zeroed, not dropped: momentum moves g
        h, buf_h = _sgd(h, buf_h, gh, hp.bias_lr)
      p = {"f": f, "g": g, "h": h}
    return p, s

  p, s = reference(params, stats)
  got = jax.tree.leaves(state.params)
  for a, b in zip(got, jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(s)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  if method == "baseline":
    np.testing.assert_array_equal(state.params["h"]["fc"]["kernel"], params["h"]["fc"]["kernel"])
  else:
    assert "bias" in metrics


def test_legacy_step_teaches_the_encoder_the_bias():
  net, params, stats, batch = _tiny()
  w = jnp.array([0.5, 0.5])
  out = {}
  for legacy in (False, True):
    hp = paper.hyper_for("tabe", 0.05, 0.05, 0.3, 0.2, legacy_encoder_bias_step=legacy)
    state = paper.FairState.create(params, stats, paper.optimizers(hp), jax.random.PRNGKey(1))
    out[legacy] = jax.jit(paper.update_rule("tabe", net, hp, w))(state, batch)[0].params["f"]
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out[False]),
                                                         jax.tree.leaves(out[True])))
  assert diff > 1e-6


# --------------------------------------------------------------------------- evaluation
def test_group_aucs_match_sklearn_per_group():
  from sklearn.metrics import roc_auc_score
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = rng.uniform(size=200) + 0.3 * labels
  types = rng.integers(1, 7, 200)
  got = experiment.group_aucs(labels, scores, types, ((1, 2), (3, 4), (5, 6)), (1, 2))
  for group in ((1, 2), (3, 4), (5, 6)):
    inside = [i for i in range(200) if types[i] in group]
    want = roc_auc_score(labels[inside], scores[inside])
    assert got["groups"]["types " + "&".join(map(str, group))] == pytest.approx(want)
  assert got["held_out"] == pytest.approx(got["groups"]["types 1&2"])


# --------------------------------------------------------------------------- loaders
def _png(path):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path, format="JPEG")


def test_isic_and_fitzpatrick_tables_in_their_published_layout(tmp_path):
  root = tmp_path / "isic2020"
  (root).mkdir()
  (root / "train.csv").write_text(
      "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
      "benign_malignant,target\nISIC_1,IP_1,male,45,torso,nevus,benign,0\n"
      "ISIC_2,IP_2,female,60,torso,melanoma,malignant,1\n")
  for n in (1, 2):
    _png(root / "train" / f"ISIC_{n}.jpg")
  d = data.load_isic2020(root)
  assert list(d.labels) == [0, 1] and d.paths[1].endswith("train/ISIC_2.jpg")
  assert list(d.skin) == [-1, -1]

  root = tmp_path / "isic2017"
  root.mkdir()
  (root / data.ISIC2017_CSV).write_text(
      "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,0.0,0.0\nISIC_0000001,1.0,0.0\n")
  for n in (0, 1):
    _png(root / data.ISIC2017_IMAGES / f"ISIC_000000{n}.jpg")
  assert list(data.load_isic2017(root).labels) == [0, 1]

  root = tmp_path / "f17k"
  root.mkdir()
  rows = [("a", 1, "malignant", ""), ("b", 2, "benign", "1 Diagnostic"),
          ("c", 3, "non-neoplastic", ""), ("d", 4, "benign", "3 Wrongly labelled"),
          ("e", -1, "malignant", ""), ("f", 6, "malignant", "2 Characteristic")]
  (root / "fitzpatrick17k.csv").write_text(
      "md5hash,fitzpatrick,label,nine_partition_label,three_partition_label,qc,url\n"
      + "".join(f"{h},{t},x,y,{p},{q},u\n" for h, t, p, q in rows))
  for h in "abf":
    _png(root / "images" / f"{h}.jpg")
  d = data.load_fitzpatrick17k(root)
  assert [p.rsplit("/", 1)[1] for p in d.paths] == ["a.jpg", "b.jpg", "f.jpg"]
  assert list(d.labels) == [1, 0, 1] and list(d.skin) == [1, 2, 6]


def test_user_domain_csv_with_fitzpatrick_and_errors(tmp_path):
  for name in ("x.png", "y.png"):
    _png(tmp_path / name)
  csv = tmp_path / "atlas.csv"
  csv.write_text("path,label,fitzpatrick\nx.png,benign,2\ny.png,malignant,\n")
  d = data.load_user("atlas", csv)
  assert list(d.labels) == [0, 1] and list(d.skin) == [2, -1]

  bad = tmp_path / "nolabel.csv"
  bad.write_text("path,diagnosis\nx.png,benign\n")
  assert "lacks column(s) ['label']" in data_error(lambda: data.load_user("a", bad),
                                                    with_layout=True)
  missing = tmp_path / "missing.csv"
  missing.write_text("path,label\nx.png,benign\nnowhere.png,malignant\n")
  assert "nowhere.png, which does not exist" in data_error(lambda: data.load_user("a", missing))
  (tmp_path / "f" / "images").mkdir(parents=True)
  (tmp_path / "f" / "fitzpatrick17k.csv").write_text("md5hash,label\n")
  assert "three_partition_label" in data_error(lambda: data.load_fitzpatrick17k(tmp_path / "f"),
                                           with_layout=True)


# --------------------------------------------------------------------------- model
def test_resnext101_32x8d_trunk_has_torchvision_s_parameter_count():
  from medda_jax.models import resnet
  shapes = abstract_variables(resnet.resnext101_32x8d(num_classes=0), (1, 64, 64, 3))
  # torchvision resnext101_32x8d: 88,791,336 parameters, 2,049,000 of them its 1000-class fc
  assert param_count(shapes["params"]) == 88_791_336 - 2_049_000


# --------------------------------------------------------------------------- splits
def test_fitzpatrick_protocol_split_trains_on_types_1_2_and_tests_the_rest():
  from medda_jax.config_utils import load_config
  c = load_config("configs/melanoma.py")
  c.train.batch_size = 4
  skin = np.repeat(np.arange(1, 7), 20).astype(np.int32)
  labels = np.tile(np.arange(2), 60).astype(np.int32)
  domain = data.Domain("f17k", tuple(f"/x/{i}.jpg" for i in range(120)), labels, skin)
  split = experiment.make_split(domain, c, {})
  assert split.classes == 2 and set(split.bias) == {0, 1}
  assert set(split.train.skin) == {1, 2}
  np.testing.assert_array_equal(split.bias, split.train.skin - 1)  # type 1 -> 0, type 2 -> 1
  held = split.test.skin <= 2
  assert held.sum() == 8 and split.test.labels[held].sum() == 4  # 20 % of each class
  assert (split.test_types == split.test.skin).all() and (~held).sum() == 80
  assert not set(split.train.paths) & set(split.test.paths)
  # ITA labels instead: six classes, and an image the labeller failed on is not trained on
  c.bias.labels = "ita"
  itas = {p: (60.0 if i % 3 else float("nan")) for i, p in enumerate(domain.paths)}
  split = experiment.make_split(domain, c, itas)
  assert split.classes == 6 and set(split.bias) == {0}
  trained = [int(p[3:-4]) for p in split.train.paths]  # "/x/<i>.jpg"
  assert trained and all(i % 3 for i in trained)
