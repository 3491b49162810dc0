"""TransVW's visual words (methods/dira/visual_words.py) against plain code: each word's
patients are its reference's nearest by the codes (with every principal component kept, the
plain distances of the resampled volumes), its coordinate holds tissue in the reference,
every sample is the plain crop of one of its word's patients; the stage runs train a head
over the words on their labels; the study finds the words of its corpus once."""

from __future__ import annotations

import numpy as np
import pytest

from medda_jax.data import models_genesis
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.dira import paper
from medda_jax.methods.dira.pretrain import Pretrainer, Settings
from medda_jax.methods.dira.visual_words import VisualWords, discover, patient_codes, resampled

SIZE = 8
SHAPES = [(20, 18, 16), (16, 16, 16), (18, 20, 16), (24, 16, 18), (16, 18, 20), (6, 16, 16),
          (20, 20, 20)]
FAMILY = [0, 0, 0, 1, 1, 1, 1]  # two anatomies: a bright slab low or high along axis 0


def _patient(p):
  """Family 0: the slab in the first half of axis 0; family 1: the second. Values in
  [0, 1], each patient its own noise and shape."""
  shape = SHAPES[p]
  rng = np.random.default_rng([11, p])
  v = 0.1 * rng.random(shape).astype(np.float32)
  half = shape[0] // 2
  v[:half] += 0.8 if FAMILY[p] == 0 else 0.0
  v[half:] += 0.8 if FAMILY[p] == 1 else 0.0
  return v


VOLUMES = [_patient(p) for p in range(len(SHAPES))]


def _plain_distances(reference, grid):
  flat = [resampled(v, grid).reshape(-1) for v in VOLUMES]
  return np.array([np.sqrt(np.sum((f - flat[reference]) ** 2)) for f in flat])


def test_resampling_keeps_a_grid_and_constants():
  v = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
  np.testing.assert_allclose(resampled(v, 6), v, atol=1e-6)
  np.testing.assert_allclose(resampled(np.full((13, 9, 7), 0.3, np.float32), 4), 0.3,
                             atol=1e-6)


def test_each_word_is_its_references_nearest_patients_at_a_coordinate_with_tissue():
  count = len(VOLUMES)
  codes = patient_codes(VOLUMES.__getitem__, count, grid=6, dims=count)
  assert codes.shape == (count, count)
  words = discover(codes, VOLUMES.__getitem__, words=4, instances=3, size=SIZE, seed=2,
                   border=0.1, tissue_level=0.5, min_tissue=0.5)
  assert len(set(words.references.tolist())) == 4
  for w, reference in enumerate(words.references):
    members = words.members[w]
    assert members[0] == reference
    # every component kept: the codes' distances are the resampled volumes' own
    want = np.argsort(_plain_distances(reference, 6), kind="stable")[:3]
    assert sorted(members.tolist()) == sorted(want.tolist()), w
    assert {FAMILY[m] for m in members} == {FAMILY[reference]}, w
    v = VOLUMES[reference]
    fraction = words.fractions[w]
    assert np.all((fraction >= 0.1) & (fraction <= 0.9))
    first = [int(round(f * max(n - SIZE, 0))) for f, n in zip(fraction, v.shape)]
    cube = v[first[0]:first[0] + SIZE, first[1]:first[1] + SIZE, first[2]:first[2] + SIZE]
    assert np.mean(cube >= 0.5) >= 0.5, w


def test_samples_are_plain_crops_of_their_words_patients():
  words = VisualWords(VOLUMES.__getitem__, len(VOLUMES), size=SIZE, words=4, instances=3,
                      grid=6, dims=7, tissue_level=0.5, crops_per_volume=3, seed=2)
  ids = np.arange(3 * len(words.holders))
  cubes, labels = words(ids), words.labels(ids)
  assert cubes.shape == (len(ids), SIZE, SIZE, SIZE) and labels.dtype == np.int32
  visits = []
  for i in ids:
    patient, word = words.pick(int(i))
    assert labels[i] == word and patient in words.words.members[word]
    v = VOLUMES[patient]
    first = [int(round(f * max(n - SIZE, 0)))
             for f, n in zip(words.words.fractions[word], v.shape)]
    want = np.full((SIZE,) * 3, v.min(), np.float32)  # the short patient is padded
    part = v[first[0]:first[0] + SIZE, first[1]:first[1] + SIZE, first[2]:first[2] + SIZE]
    want[:part.shape[0], :part.shape[1], :part.shape[2]] = part
    np.testing.assert_array_equal(cubes[i], want, err_msg=str(i))
    if i % 3 == 0:
      visits.append(patient)
    assert patient == visits[-1]  # a visit's crops share its patient
  assert sorted(visits) == sorted(words.holders.tolist())  # one pass visits every holder
  again = VisualWords(VOLUMES.__getitem__, len(VOLUMES), size=SIZE, words=4, instances=3,
                      grid=6, dims=7, tissue_level=0.5, crops_per_volume=3, seed=2,
                      codes=words.codes)
  np.testing.assert_array_equal(again(ids), cubes)
  np.testing.assert_array_equal(again.labels(ids), labels)


def test_too_few_patients_or_no_tissue_are_named():
  codes = np.random.default_rng(0).random((7, 3))
  with pytest.raises(ConfigError, match="8 visual words need as many reference patients"):
    discover(codes, VOLUMES.__getitem__, words=8, instances=2, size=SIZE)
  with pytest.raises(ConfigError, match="8 instances"):
    discover(codes, VOLUMES.__getitem__, words=2, instances=8, size=SIZE)
  with pytest.raises(DataError, match="only 0 of 2 visual words"):
    discover(codes, VOLUMES.__getitem__, words=2, instances=2, size=SIZE, tissue_level=0.95)


def test_transvw_stage_runs_train_a_word_head_on_the_words_labels(tmp_path):
  """Batches: the words' cubes under Models Genesis distortion, labelled by their words; D
  then DR train a head with one class per word."""
  words = VisualWords(VOLUMES.__getitem__, len(VOLUMES), size=SIZE, words=3, instances=3,
                      grid=6, dims=7, tissue_level=0.5, crops_per_volume=2, seed=0)
  s = Settings(features=2, levels=2, size=SIZE, batch_size=2, steps=2, learning_rate=1e-3,
               weights=paper.LossWeights(), permutations=6, steps_per_call=1,
               checkpoint_every=1, inner_loop="host", words=3)
  pre = Pretrainer(s, None, "noise", tmp_path, words=words)
  batch = next(pre.batches("transvw", 2, gan=False))
  ids = np.arange(2)
  np.testing.assert_array_equal(batch["label"][0], words.labels(ids))
  np.testing.assert_array_equal(batch["target"][0, ..., 0], words(ids))
  for k, i in enumerate(ids):
    want = models_genesis.distort(words(ids)[k], np.random.default_rng([0, int(i)]))
    np.testing.assert_array_equal(batch["image"][0, k, ..., 0], want)
  d, curve = pre.run("transvw", ("D",), None)
  assert np.all(np.isfinite(curve)) and d["head"]["dense"]["kernel"].shape[-1] == 3
  dr, curve = pre.run("transvw", ("D", "DR"), pre.saved("transvw", ("D",)))
  assert np.all(np.isfinite(curve)) and "decoder" in dr
  with pytest.raises(ConfigError, match="visual words"):
    Pretrainer(s, None, "noise", tmp_path / "none").run("transvw", ("D",), None)


def test_the_study_finds_its_corpus_words_once_and_the_default_is_the_papers(tmp_path,
                                                                            monkeypatch):
  from medda_jax.config_utils import load_config
  from medda_jax.methods.dira import experiment, visual_words

  assert load_config("configs/dira.py").tasks == paper.TASKS == load_config(
      "configs/dira.py:paper").tasks
  c = load_config("configs/dira.py:smoke")
  first = experiment.visual_words(c, tmp_path)
  volume, count = experiment.patients(c)
  assert count == 6 and len(first) == c.pretrain.transvw.words
  saved = np.load(tmp_path / "pretrain" / "transvw_codes.npy")
  np.testing.assert_array_equal(saved, first.codes)
  np.testing.assert_allclose(
      saved, patient_codes(volume, count, c.pretrain.transvw.grid, c.pretrain.transvw.dims),
      rtol=1e-5, atol=1e-5)
  def unread(*args, **kwargs):
    raise AssertionError("the codes were computed again")
  monkeypatch.setattr(visual_words, "patient_codes", unread)
  again = experiment.visual_words(c, tmp_path)  # read back
  np.testing.assert_array_equal(again.words.members, first.words.members)
  np.testing.assert_array_equal(again.words.fractions, first.words.fractions)
