"""ODEx's algorithm against plain recomputations: streaming statistics, Mahalanobis distance,
the pool's selection / expansion / routing on hand-made statistics, EWC's penalty and
Fisher, LwF's distillation, BWT / FWT, the model's feature tap, and the data loaders."""

import csv

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.odex import data as data_lib
from medda_jax.methods.odex import paper


def test_streaming_statistics_equal_numpy_mean_and_cov():
  rng = np.random.default_rng(0)
  # a large offset: naive sums of squares in float32 would lose the covariance
  z = (rng.normal(size=(103, 5)) @ rng.normal(size=(5, 5)) + 1e4).astype(np.float32)
  g = paper.StreamingGaussian(5)
  for start in range(0, len(z), 17):  # uneven batches
    g.update(z[start:start + 17])
  assert g.n == 103
  np.testing.assert_allclose(g.mean, np.mean(z.astype(np.float64), axis=0), rtol=1e-12)
  np.testing.assert_allclose(g.cov, np.cov(z.astype(np.float64), rowvar=False, bias=True),
                             rtol=1e-9, atol=1e-9)


def test_mahalanobis_equals_the_plain_formula():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4))
  cov = a @ a.T + 0.1 * np.eye(4)
  mean = rng.normal(size=4)
  z = rng.normal(size=(6, 4))
  g = paper.Gaussian(mean, cov, rel_eps=1e-3)
  reg = cov + 1e-3 * np.trace(cov) / 4 * np.eye(4)
  want = [float(np.sqrt((x - mean) @ np.linalg.inv(reg) @ (x - mean))) for x in z]
  np.testing.assert_allclose(g.distance(z), want, rtol=1e-10)
  # a singular covariance (fewer samples than dimensions) still gives finite distances
  few = rng.normal(size=(2, 4))
  singular = paper.Gaussian(few.mean(0), np.cov(few, rowvar=False, bias=True))
  assert np.all(np.isfinite(singular.distance(z)))


def _member(mean, scale, n=200, seed=0):
  """A model whose one-stage history is N(mean, scale^2 I), with its in-distribution
  distances measured on n samples of that Gaussian."""
  rng = np.random.default_rng(seed)
  z = mean + scale * rng.normal(size=(n, len(mean)))
  g = paper.StreamingGaussian(len(mean))
  g.update(z)
  history = [paper.Gaussian(g.mean, g.cov)]
  return paper.Member(history, paper.summed_distance(history, z), [0]), rng


def test_a_far_stage_expands_the_pool_and_a_near_one_does_not():
  d = 4
  member, rng = _member(np.zeros(d), 1.0)
  near = 0.1 + rng.normal(size=(50, d))  # 0.1 sigma shift
  far = 5.0 + rng.normal(size=(50, d))  # 5 sigma shift
  assert not paper.select([member], [near]).expand
  sel = paper.select([member], [far])
  assert sel.expand and sel.model == 0 and sel.score > sel.threshold
  # the normalisation and threshold written out
  lo, hi = member.d_in.min(), member.d_in.max()
  norm_in = (member.d_in - lo) / (2 * hi - lo)
  assert sel.threshold == pytest.approx(2 * norm_in.mean())
  raw = [np.sqrt(np.sum((z - member.history[0].mean) ** 2 @ np.diag(
      1 / np.diag(member.history[0].cov + 1e-6 * np.trace(member.history[0].cov) / d
                  * np.eye(d))))) for z in far]
  assert sel.raw[0] == pytest.approx(np.mean(raw), rel=0.05)  # near-diagonal covariance
  # a fixed threshold is used as given
  assert paper.select([member], [near], threshold=-1.0).expand


def test_selection_picks_the_closest_model_and_routing_the_matching_one():
  d = 3
  a, _ = _member(np.zeros(d), 1.0, seed=1)
  b, rng = _member(np.full(d, 10.0), 1.0, seed=2)
  # features differ per model: give each model the same images seen through its own tap
  images_a = rng.normal(size=(5, d))  # from a's distribution
  images_b = 10.0 + rng.normal(size=(5, d))  # from b's
  z = np.concatenate([images_a, images_b])
  assert paper.select([a, b], [images_b, images_b]).model == 1
  np.testing.assert_array_equal(paper.route([a, b], [z, z]), [0] * 5 + [1] * 5)
  # routing uses the summed distance over a model's history
  c = paper.Member(a.history + b.history, a.d_in, [0, 1])
  total = a.history[0].distance(z) + b.history[0].distance(z)
  np.testing.assert_allclose(paper.summed_distance(c.history, z), total)


def test_per_stage_routing_is_fair_to_a_model_with_a_longer_history():
  d = 3
  a, rng = _member(np.zeros(d), 1.0, seed=1)
  # b was copied from a and trained on a far stage: its history holds a's Gaussian too
  far = 10.0 + rng.normal(size=(200, d))
  g = paper.StreamingGaussian(d)
  g.update(far)
  history = a.history + [paper.Gaussian(g.mean, g.cov)]
  b = paper.Member(history, paper.summed_distance(history, far), [0, 1])
  z = np.concatenate([rng.normal(size=(4, d)), 10.0 + rng.normal(size=(4, d))])
  np.testing.assert_array_equal(paper.route([a, b], [z, z]), [0] * 4 + [1] * 4)
  # the plain sum sends the far images to a as well: b's sum adds a's distance
  np.testing.assert_array_equal(paper.route([a, b], [z, z], per_stage=False), [0] * 8)
  plain = [[sum(h.distance(x[None])[0] for h in m.history) / len(m.history) for m in (a, b)]
           for x in z]
  np.testing.assert_array_equal(np.argmin(plain, axis=1), [0] * 4 + [1] * 4)


def test_ewc_penalty_and_fisher_against_plain_loops():
  rng = np.random.default_rng(3)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
  anchor = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
  fisher = {"w": rng.uniform(size=(3, 2)), "b": rng.uniform(size=2)}
  want = 0.0
  for k in params:
    for p, a, f in zip(params[k].ravel(), anchor[k].ravel(), fisher[k].ravel()):
      want += f * (p - a) ** 2
  got = paper.ewc_penalty(params, anchor, fisher, 0.4)
  assert float(got) == pytest.approx(0.5 * 0.4 * want, rel=1e-6)
  grads = {"w": rng.normal(size=(5, 3, 2)), "b": rng.normal(size=(5, 2))}
  f = paper.fisher_diagonal(grads)
  for k in grads:
    plain = sum(g ** 2 for g in grads[k]) / 5
    np.testing.assert_allclose(f[k], plain, rtol=1e-6)


def test_lwf_distillation_against_the_plain_formula():
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(2, 4, 4, 4, 1)), rng.normal(size=(2, 4, 4, 4, 1))
  temp = 2.0
  want = []
  for a, b in zip(s.ravel(), t.ravel()):
    q = 1 / (1 + np.exp(-b / temp))
    p = 1 / (1 + np.exp(-a / temp))
    want.append(-(q * np.log(p) + (1 - q) * np.log(1 - p)))
  got = paper.lwf_distillation(jnp.asarray(s), jnp.asarray(t), temp)
  assert float(got) == pytest.approx(np.mean(want), rel=1e-5)
  # minimal (the teacher's own entropy) when the student equals the teacher
  assert float(paper.lwf_distillation(jnp.asarray(t), jnp.asarray(t), temp)) < float(got)


def test_bwt_and_fwt_on_a_hand_made_matrix():
  r = np.array([[0.8, 0.5, 0.4],
                [0.7, 0.9, 0.5],
                [0.6, 0.8, 0.9]])
  assert paper.bwt(r) == pytest.approx(((0.6 - 0.8) + (0.8 - 0.9)) / 2)
  assert paper.fwt(r) == pytest.approx(((0.9 - 0.5) + (0.9 - 0.4)) / 2)
  assert paper.bwt(np.eye(3)) == pytest.approx(-1.0)


def test_the_feature_tap_is_the_first_convolutions_channel_mean():
  from medda_jax.models.unet3d import UNet3D
  model = UNet3D(features=2, levels=2)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 4, 4, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  logits, inter = model.apply(variables, x, mutable=["intermediates"])
  assert logits.shape == (2, 4, 4, 4, 1)
  k = variables["params"]["enc0_conv0"]["kernel"]
  bias = variables["params"]["enc0_conv0"]["bias"]
  conv = jax.lax.conv_general_dilated(x, k, (1, 1, 1), [(1, 1)] * 3,
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + bias
  z = paper.features(inter["intermediates"]["norm1_input"][0])
  np.testing.assert_allclose(z, conv.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- loaders
def _nifti(path, array):
  nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def _hippocampus_task(root, n=4, shape=(10, 12, 9)):
  """A tiny Task04_Hippocampus in the Decathlon's layout (labels 1 anterior, 2 posterior)."""
  task = root / "Task04_Hippocampus"
  (task / "imagesTr").mkdir(parents=True)
  (task / "labelsTr").mkdir()
  rng = np.random.default_rng(0)
  training = []
  for i in range(n):
    image = rng.uniform(1, 100, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:6, 4:7, 2:4] = 1
    label[3:6, 7:9, 2:4] = 2
    _nifti(task / "imagesTr" / f"hippocampus_{i:03d}.nii.gz", image)
    _nifti(task / "labelsTr" / f"hippocampus_{i:03d}.nii.gz", label)
    training.append({"image": f"./imagesTr/hippocampus_{i:03d}.nii.gz",
                     "label": f"./labelsTr/hippocampus_{i:03d}.nii.gz"})
  import json
  (task / "dataset.json").write_text(json.dumps({"name": "Hippocampus", "modality": {"0": "MRI"},
                                                 "labels": {"0": "background", "1": "Anterior",
                                                            "2": "Posterior"},
                                                 "training": training}))
  return task


def test_msd_hippocampus_stream_reads_the_published_layout_per_file(tmp_path, monkeypatch):
  _hippocampus_task(tmp_path, n=4)
  stages = data_lib.msd_stream(str(tmp_path), 2, 0.5, (8, 8, 8), seed=0)
  assert [(len(s.train), len(s.test)) for s in stages] == [(1, 1), (1, 1)]
  reads = []
  original = nib.load
  monkeypatch.setattr(nib, "load", lambda p, *a, **k: reads.append(p) or original(p, *a, **k))
  image, mask = stages[1].train.read(0)
  assert len(reads) == 2  # one image and one label file, nothing else
  assert image.shape == mask.shape == (8, 8, 8)
  # labels 1 + 2 merged; centre crop of (10, 12, 9) to 8^3 keeps rows 1.. / 2.. / 0..
  want = np.zeros((10, 12, 9), np.uint8)
  want[3:6, 4:9, 2:4] = 1
  np.testing.assert_array_equal(mask, want[1:9, 2:10, 0:8])
  assert abs(float(image[image != 0].mean())) < 1e-4  # z-scored


def test_msd_stream_names_the_missing_folder(tmp_path):
  with pytest.raises(DataError, match="no Task04_Hippocampus folder"):
    data_lib.msd_stream(str(tmp_path), 2, 0.5, (8, 8, 8), seed=0)


def _manifest(tmp_path, name, rows):
  path = tmp_path / f"{name}.csv"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "label"])
    w.writerows(rows)
  return path


def test_user_manifests_make_one_stage_each(tmp_path):
  rng = np.random.default_rng(1)
  entries = []
  for stage in ("early", "late"):
    rows = []
    for i in range(3):
      img, lab = tmp_path / f"{stage}{i}_img.nii.gz", tmp_path / f"{stage}{i}_lab.nii.gz"
      _nifti(img, rng.uniform(1, 5, size=(6, 6, 6)).astype(np.float32))
      label = np.zeros((6, 6, 6), np.uint8)
      label[2:4, 2:4, 2:4] = 3
      _nifti(lab, label)
      rows.append([img.name, lab.name])
    entries.append(f"{stage}={_manifest(tmp_path, stage, rows)}")
  stages = data_lib.user_stream(entries, 0.34, (4, 4, 4), seed=0)
  assert [s.name for s in stages] == ["early", "late"]
  assert [(len(s.train), len(s.test)) for s in stages] == [(2, 1), (2, 1)]
  _, mask = stages[0].test.read(0)
  assert mask.sum() == 8 and set(np.unique(mask)) == {0, 1}


def test_user_manifest_errors_are_one_line(tmp_path):
  from conftest import data_error
  img = tmp_path / "a_img.nii.gz"
  _nifti(img, np.ones((6, 6, 6), np.float32))
  missing = _manifest(tmp_path, "missing", [[img.name, "nowhere.nii.gz"]])
  message = data_error(lambda: data_lib.user_stream([f"m={missing}"], 0.5, (4, 4, 4), 0))
  assert "label file" in message and "nowhere.nii.gz" in message and "does not exist" in message
  lab = tmp_path / "a_lab.nii.gz"
  _nifti(lab, np.zeros((6, 6, 5), np.uint8))
  shapes = _manifest(tmp_path, "shapes", [[img.name, lab.name]])
  message = data_error(lambda: data_lib.user_stream([f"s={shapes}"], 0.5, (4, 4, 4), 0))
  assert "image shape (6, 6, 6) and label shape (6, 6, 5) differ" in message


@pytest.mark.parametrize("value, ok", [("auto", None), ("0.25", 0.25), ("abc", "not a number"),
                                       ("", "not a number"), ("nan", "not a number")])
def test_the_threshold_must_be_a_number_or_auto(value, ok):
  from medda_jax.config_utils import load_config
  from medda_jax.methods.odex import threshold_value, validate
  c = load_config("configs/odex.py:smoke")
  c.odex.threshold = value
  if isinstance(ok, str):
    with pytest.raises(ConfigError, match=ok):
      validate(c)
  else:
    validate(c)
    assert threshold_value(c) == ok


def test_demo_stream_drifts_and_keeps_real_labels():
  stages = data_lib.demo_stream(3, 2, 1, (16, 32, 28), seed=0)
  masks = [s.train.read(i)[1] for s in stages for i in range(2)]
  # a hippocampus crop: a real structure of roughly 800-1300 voxels at 2 mm
  assert all(300 < m.sum() < 2500 for m in masks)
  style0, style2 = data_lib.drift_style(0.0), data_lib.drift_style(1.0)
  assert style0.noise < style2.noise and style2.resolution[0] == 2.0
  assert style2.curve[1] == tuple(data_lib._T2)
