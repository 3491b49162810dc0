"""POPAR: patches, the per-sample distortions (shuffled order or Models Genesis appearance,
targets always the original patches), order restoration from perfect logits, the losses
against plain loops, the sub-tasks' loss weights, the heads on both backbones, config
checks, and the method end to end on its smoke config (one shared run, POPAR and SimMIM
runs side by side): tables, figures and the saved encoder grafted exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_grafted_classifier, config_with, shared_run
from medda_jax.config_utils import load_config
from medda_jax.errors import ConfigError
from medda_jax.methods.popar import experiment, paper
from medda_jax.methods.simmim import experiment as study_lib

CONFIG = "configs/popar.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"
GENESIS = dict(nonlinear_rate=0.9, local_rate=0.5, paint_rate=0.9, outpaint_rate=0.8)

popar_run = shared_run(CONFIG, name="popar_run")


def _image(size=12, channels=1, seed=0):
  return np.random.default_rng(seed).random((size, size, channels)).astype(np.float32)


# --------------------------------------------------------------------------- patches
def test_patchify_is_raster_order_and_unpatchify_inverts_it():
  image = _image(12, channels=2)
  patches = paper.patchify(image, 4)
  assert patches.shape == (9, 4 * 4 * 2)
  for r in range(3):
    for q in range(3):
      np.testing.assert_array_equal(patches[r * 3 + q],
                                    image[4 * r:4 * r + 4, 4 * q:4 * q + 4].reshape(-1))
  np.testing.assert_array_equal(paper.unpatchify(patches, 4, (3, 3)), image)


def test_shuffled_sample_shows_permuted_patches_with_their_positions_as_targets():
  image = _image()
  shown, order, target = paper.distort(image, 4, np.random.default_rng(3), 1.0, GENESIS)
  original = paper.patchify(image, 4)
  assert sorted(order) == list(range(9)) and not np.array_equal(order, np.arange(9))
  np.testing.assert_array_equal(paper.patchify(shown, 4), original[order])  # slot j: p_order[j]
  np.testing.assert_array_equal(target, original)  # the original patch of each slot


def test_genesis_sample_keeps_positions_and_targets_the_original():
  image = _image()
  shown, order, target = paper.distort(image, 4, np.random.default_rng(4), 0.0,
                                       dict(GENESIS, paint_rate=1.0))
  np.testing.assert_array_equal(order, np.arange(9))
  np.testing.assert_array_equal(target, paper.patchify(image, 4))
  assert not np.allclose(shown, image) and shown.shape == image.shape


def test_perfect_logits_restore_the_image():
  image = _image()
  shown, order, _ = paper.distort(image, 4, np.random.default_rng(5), 1.0, GENESIS)
  logits = np.eye(9)[order] * 10.0
  np.testing.assert_array_equal(paper.restore_order(shown, logits, 4), image)
  wrong = paper.restore_order(shown, np.eye(9)[np.roll(order, 1)], 4)
  assert not np.array_equal(wrong, image)


def test_sample_is_a_function_of_seed_and_sample_id():
  c = load_config(CONFIG)
  pretext = experiment.PopARPretext(c, "vit")
  images = np.stack([_image(24, seed=s) for s in range(4)])
  a = pretext.batch(images, np.arange(10, 14), seed=0)
  b = pretext.batch(images[2:], np.arange(12, 14), seed=0)
  for key in a:
    np.testing.assert_array_equal(a[key][2:], b[key])
  other = pretext.batch(images, np.arange(10, 14), seed=1)
  assert not np.array_equal(a["image"], other["image"])
  shuffled = [not np.array_equal(o, np.arange(9)) for o in
              pretext.batch(np.repeat(images[:1], 64, 0), np.arange(64), 0)["order"]]
  assert 16 < sum(shuffled) < 48  # one distortion or the other, each about half the time


# --------------------------------------------------------------------------- losses
def test_losses_sum_over_tokens_and_average_over_the_batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 4)).astype(np.float32)
  appearance = rng.normal(size=(2, 4, 6)).astype(np.float32)
  order = np.array([[1, 0, 3, 2], [0, 1, 2, 3]], np.int32)
  target = rng.normal(size=(2, 4, 6)).astype(np.float32)
  ce, se, hits = 0.0, 0.0, 0
  for b in range(2):
    for j in range(4):
      z = logits[b, j].astype(np.float64)
      ce += -(z[order[b, j]] - np.log(np.sum(np.exp(z))))
      se += np.sum((target[b, j].astype(np.float64) - appearance[b, j]) ** 2)
      hits += int(np.argmax(z) == order[b, j])
  l_pop, l_ar, accuracy = paper.popar_losses(logits, appearance, order, target)
  np.testing.assert_allclose([l_pop, l_ar, accuracy], [ce / 2, se / 2, hits / 8], rtol=1e-5)


@pytest.mark.parametrize("task, zero_head", [("poc", "appearance_head"),
                                             ("mgr", "order_head"), ("popar", None)])
def test_each_task_trains_only_its_heads(task, zero_head):
  c = load_config(CONFIG)
  pretext = experiment.PopARPretext(c, "vit", task)
  params = pretext.init(0)
  images = np.stack([_image(24, seed=s) for s in range(2)])
  batch = {k: jnp.asarray(v) for k, v in pretext.batch(images, np.arange(2), 0).items()}
  grads = jax.grad(lambda p: pretext.loss()(p, {}, batch, jax.random.PRNGKey(0))[0])(params)
  for head in ("order_head", "appearance_head"):
    norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads[head]))
    assert (norm == 0.0) == (head == zero_head), (task, head, norm)


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_one_output_token_per_patch_on_both_backbones(backbone):
  c = load_config(CONFIG)
  pretext = experiment.PopARPretext(c, backbone)
  params = pretext.init(0)
  n = (pretext.size // pretext.patch) ** 2
  logits, appearance = pretext.model.apply({"params": params}, jnp.zeros((2, 24, 24, 1)))
  assert logits.shape == (2, n, n) and appearance.shape == (2, n, pretext.patch ** 2)
  assert "mask_token" not in params["encoder"]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value, message", [
    ("pretrain.runs", (("x", "in_domain", "", "jigsaw"),), "unknown task 'jigsaw'"),
    ("pretrain.runs", (("a", "in_domain", "", "popar"), ("b", "in_domain", "a", "simmim")),
     "continues its own task"),
    ("popar.image_size.vit", 20, "multiple of the vit encoder's stride"),
    ("popar.warmup_epochs", 2, "must be below"),
    ("popar.order_weight", 1.5, "out of range"),
    ("popar.genesis.paint_rate", -0.1, "out of range"),
])
def test_config_mistakes_are_named(field, value, message):
  with pytest.raises(ConfigError, match=message):
    experiment.validate(config_with(CONFIG, field, value))


def test_simmim_config_takes_no_popar_runs():
  c = config_with("configs/simmim.py:smoke", "pretrain.runs", (("x", "in_domain", "", "popar"),))
  with pytest.raises(ConfigError, match="unknown task 'popar'"):
    study_lib.validate(c)


# --------------------------------------------------------------------------- end to end
def test_smoke_writes_tables_and_figures_labelled_as_demo(popar_run):
  workdir, _ = popar_run
  c = load_config(CONFIG)
  results = json.loads((workdir / "results.json").read_text())
  assert "DEMO DATA" in results["label"] and "random weights" in results["label"]
  assert [r[3] for r in results["pretraining"]] == ["popar", "popar", "poc", "simmim"]
  for backbone in c.backbones:
    assert list(results["table"][backbone]) == study_lib.inits(c, backbone)
  runs = json.loads((workdir / study_lib.RESULTS_FILE).read_text())
  curve = runs["pretrain/vit/POPAR in-domain"]["curve"]
  assert len(curve) >= 2 and all(np.isfinite(curve))
  md = (workdir / "results.md").read_text()
  assert "| POC in-domain | vit |" in md and "order classification only on corpus" in md
  assert "| POPAR continued | swin |" in md and "SimMIM in-domain = SimMIM" in md
  for name in ("reconstructions_swin.png", "reconstructions_vit.png", "transfer.png"):
    assert (workdir / name).read_bytes()[:8] == PNG, name


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_grafted_classifier_holds_exactly_the_saved_popar_encoder(popar_run, backbone):
  """POPAR's checkpoint read back and grafted: every encoder parameter equals the saved one
  (resized tables and embeddings as their rule gives), both pretext heads are dropped, the
  classifier's head is fresh, and the continued run moved on from its start."""
  workdir, _ = popar_run
  c = load_config(CONFIG)
  study = study_lib.Study(c, workdir, backbone, experiment.PRETEXTS)
  saved = study.saved_pretraining("POPAR in-domain")
  continued = study.saved_pretraining("POPAR continued")
  assert set(saved) == {"encoder", "order_head", "appearance_head"}
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                      jax.tree.leaves(continued)))
  check_grafted_classifier(study, "POPAR in-domain", saved)


def test_each_run_trains_its_own_tasks_loss(popar_run):
  """POPAR logs 0.5 L_pop + 0.5 L_ar, order classification alone logs L_pop: the two tasks
  share an optimiser setting but not a compiled step."""
  workdir, _ = popar_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  seen = set()
  for r in records:
    stage = r.get("stage", "")
    if "order_loss" not in r:
      continue
    if stage.endswith("/popar_in_domain"):
      np.testing.assert_allclose(r["loss"], 0.5 * r["order_loss"] + 0.5 * r["appearance_loss"],
                                 rtol=1e-4)
      seen.add("popar")
    elif stage.endswith("/poc_in_domain"):
      np.testing.assert_allclose(r["loss"], r["order_loss"], rtol=1e-5)
      assert not np.isclose(r["loss"], 0.5 * r["order_loss"] + 0.5 * r["appearance_loss"])
      seen.add("poc")
  assert seen == {"popar", "poc"}
