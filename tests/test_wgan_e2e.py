"""Class-wise WGAN augmentation: its pieces against plain computations, and the whole
experiment on its smoke config (table, figure, sample grids, resumption, config errors)."""

import json

import jax
import numpy as np
import pytest

from conftest import TWO_DEVICES, config_with, kill_after_results, run_train
from medda_jax import parallel
from medda_jax.config_utils import load_config
from medda_jax.data.images import ImageSet
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods import wgan_aug

CONFIG = "configs/wgan_synth.py:smoke"


def _set(images_per_class: dict[int, int], size=4) -> ImageSet:
  labels = np.concatenate([np.full(n, k, np.int32) for k, n in images_per_class.items()])
  images = np.arange(len(labels) * size * size, dtype=np.float32).reshape(-1, size, size, 1)
  return ImageSet(images / images.max(), labels)


def test_stratified_draw_keeps_class_shares_and_stays_in_its_pool():
  labels = np.array([0] * 30 + [1] * 70)
  rng = np.random.default_rng(0)
  idx = wgan_aug.stratified(labels, 10, rng)
  assert len(set(idx)) == 10 and np.sum(labels[idx] == 0) == 3
  pool = np.arange(50, 100)  # class 1 only
  assert set(wgan_aug.stratified(labels, 5, rng, pool)) <= set(pool)
  with pytest.raises(ConfigError, match="only 50"):
    wgan_aug.stratified(labels, 51, rng, pool)


def test_synthetic_counts_follow_the_class_split():
  real = _set({0: 21, 1: 79})
  assert wgan_aug.class_counts(25, real, "proportional") == {0: 5, 1: 20}  # 5.25 / 19.75
  assert wgan_aug.class_counts(75, real, "equal") == {0: 38, 1: 37} or \
      wgan_aug.class_counts(75, real, "equal") == {0: 37, 1: 38}
  assert sum(wgan_aug.class_counts(100, real, "proportional").values()) == 100


def test_mixed_training_set_adds_labelled_samples_from_the_pool():
  real = _set({0: 3, 1: 7})
  pool = {0: np.full((20, 4, 4, 1), 0.25, np.float32), 1: np.full((20, 4, 4, 1), 0.75, np.float32)}
  mixed = wgan_aug.mixed_training_set(real, pool, 10, "proportional", seed=0)
  assert len(mixed.labels) == 20
  np.testing.assert_array_equal(mixed.images[:10], real.images)
  synth_images, synth_labels = mixed.images[10:], mixed.labels[10:]
  assert np.sum(synth_labels == 0) == 3 and np.sum(synth_labels == 1) == 7
  # every synthetic image carries the label of the generator (pool) it came from
  np.testing.assert_array_equal(synth_images[:, 0, 0, 0], np.where(synth_labels == 1, 0.75, 0.25))
  with pytest.raises(ConfigError, match="samples_per_class"):
    wgan_aug.mixed_training_set(real, pool, 100, "proportional", seed=0)


def test_synthetic_pool_counts_flips_as_synthetic():
  real = _set({0: 2, 1: 3})
  samples = {0: np.random.default_rng(0).random((4, 4, 4, 1)),
             1: np.random.default_rng(1).random((5, 4, 4, 1))}
  pool = wgan_aug.synthetic_pool(samples, real, flip_synth=True, flip_real=True)
  assert len(pool[0]) == 4 + 4 + 2 and len(pool[1]) == 5 + 5 + 3
  np.testing.assert_array_equal(pool[1][5], samples[1][0][:, ::-1])  # mirrored left-right
  np.testing.assert_array_equal(pool[1][10], real.images[2][:, ::-1])
  plain = wgan_aug.synthetic_pool(samples, real, flip_synth=False, flip_real=False)
  assert len(plain[0]) == 4


def test_classifier_batches_visit_every_image_once_per_epoch():
  data = _set({0: 4, 1: 6})
  batches = wgan_aug.classifier_batches(data, steps=5, batch_size=4, seed=0)
  assert batches["image"].shape == (5, 4, 4, 4, 1)
  first_epoch = batches["image"].reshape(-1, 4, 4, 1)[:10]
  assert len({im.tobytes() for im in first_epoch}) == 10  # a permutation of all 10
  np.testing.assert_array_equal(batches["label"].reshape(-1)[:10].sum(), 6)


def test_domain_gap_and_ratio_names():
  assert wgan_aug.domain_gap(71.4, 66.0) == pytest.approx(5.4)
  assert [wgan_aug.ratio_label(100, s) for s in (0, 25, 50, 75, 100)] == [
      "real only", "4:1", "2:1", "4:3", "1:1"]


def test_wgan_training_resumes_to_the_same_generator(tmp_path):
  """Interrupted after half the steps and rerun = trained in one go (same data, same RNG)."""
  config = load_config(CONFIG)
  mesh = parallel.data_mesh()
  images = np.random.default_rng(0).random((12, 16, 16, 1)).astype(np.float32)

  def trained(workdir, g_steps):
    with config.unlocked():
      config.gan.g_steps = g_steps
      config.gan.checkpoint_every = 1
    writer = MetricWriter(workdir)
    class_gan = wgan_aug.ClassGAN(config, mesh, writer, "host", np.float32)
    result = class_gan.train(images, "wgan", workdir, seed=0)
    writer.close()
    return result

  straight = trained(tmp_path / "straight", 8)
  trained(tmp_path / "resumed", 4)
  resumed = trained(tmp_path / "resumed", 8)  # continues from the step-4 checkpoint
  assert len(resumed.curve) == len(straight.curve) == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=1e-6),
               resumed.state.params, straight.state.params)
  assert int(resumed.state.step) == 8


# wgan_run: tests/conftest.py


def test_smoke_writes_table_figure_and_sample_grids(wgan_run):
  workdir, proc = wgan_run
  final = json.loads(proc.stdout)
  config = load_config(CONFIG)
  results = json.loads((workdir / "wgan_results.json").read_text())
  splits = wgan_aug.load_splits(config)  # the run's test sets (a fixed split seed)
  sets = {"source": splits.source_test, **splits.targets}
  for name in config.classifiers:
    for count in config.synthetic.counts:
      run = results[f"{name}/{count}/0"]  # one seed: the table's mean is this run
      predicted = {"source": run["source_predictions"], **run["target_predictions"]}
      for key, data in sets.items():  # every accuracy and recall, recomputed by hand
        correct = [int(p) == int(y) for p, y in zip(predicted[key], data.labels)]
        assert len(correct) == len(data.labels) == len(predicted[key])
        field = "source_acc" if key == "source" else f"{key}_acc"
        acc = final[f"{field}/{name}/{count}"]
        assert acc == pytest.approx(100.0 * sum(correct) / len(correct))
        if key != "source":
          for label, recall in run["target_recall"][key].items():
            mine = [c for c, y in zip(correct, data.labels) if y == int(label)]
            assert recall == pytest.approx(100.0 * sum(mine) / len(mine))
      assert run["evaluations"] == config.train.epochs  # the checkpoint is chosen per epoch
      for target in config.data.targets:
        gap = final[f"gap/{target}/{name}/{count}"]  # the paper's: real-only source accuracy
        assert gap == pytest.approx(final[f"source_acc/{name}/0"]
                                    - final[f"{target}_acc/{name}/{count}"])
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md
  for name in config.classifiers:
    assert f"## {name}" in md
  assert md.count("| real only |") == len(config.classifiers)
  assert len(results) == len(config.classifiers) * len(config.synthetic.counts) * len(config.seeds)
  n_real = config.data.n_real_train
  assert {r["train_images"] for r in results.values()} == {n_real + k
                                                          for k in config.synthetic.counts}
  for png in ("ratio.png", "samples_digit_3.png", "samples_digit_8.png", "wgan_curves.png"):
    assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
  with np.load(workdir / "synthetic.npz") as f:
    assert f["class_0"].shape == (config.synthetic.samples_per_class, 16, 16, 1)
    assert 0.0 <= f["class_1"].min() and f["class_1"].max() <= 1.0
    assert json.loads(str(f["manifest"]))["g_steps"] == config.gan.g_steps
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  gan_rows = [r for r in records if r["stage"] == "wgan_class0"]
  assert gan_rows and {"d_loss", "g_loss", "d_gp", "d_wasserstein"} <= set(gan_rows[0])


def test_killed_run_resumes_to_the_same_table(wgan_run, tmp_path):
  # Both class WGANs and one classifier, killed between its two synthetic counts: the
  # resumed run must equal that part of the uninterrupted reference.
  reference, _ = wgan_run
  killed = tmp_path / "killed"
  part = "--config.classifiers=('resnet50',)"
  child = run_train(killed, part, config=CONFIG, background=True, env=TWO_DEVICES)
  results = killed / "wgan_results.json"
  kill_after_results(child, results, 1)
  assert not (killed / "results.md").exists()
  proc = run_train(killed, part, config=CONFIG, env=TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "wgan_results.json").read_text())
  want = json.loads((reference / "wgan_results.json").read_text())
  assert len(got) == 2 and set(got) < set(want)
  for key in got:
    assert got[key]["source"] == pytest.approx(want[key]["source"], abs=1e-6), key
    assert got[key]["targets"] == pytest.approx(want[key]["targets"], abs=1e-6), key


# Config mistakes caught by wgan_aug.validate (run by the trainer before anything else); the
# synthetic count is checked once the data is read, so it goes through the command line.
@pytest.mark.parametrize("field, value, message", [
    ("gan.loss", "hinge", "config.gan.loss"),
    ("gan.steps_per_call", 3, "must divide config.gan.g_steps=4"),
    ("data.source", "busi", "config.data.source_dir must name the busi data"),
    ("classifiers", ("resnet50", "alexnet"), "unknown entries ['alexnet']"),
    ("data.size", 24, "must be a power of two"),
])
def test_config_mistakes_are_named(field, value, message):
  with pytest.raises(ConfigError) as e:
    wgan_aug.validate(config_with(CONFIG, field, value))
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("--config.gan.loss=hinge", "config.gan.loss"),
    ("--config.synthetic.counts=(0,500)", "raise config.synthetic.samples_per_class"),
])
def test_config_mistakes_end_with_one_error_line(tmp_path, override, message):
  proc = run_train(tmp_path / "bad", override, config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr.strip().splitlines()[-1]
