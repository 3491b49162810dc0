"""DiRA's stepwise stage runs (methods/dira/pretrain.py) on tiny cubes: the runs the
strategies need, each stage started from its parent's checkpoint, the adversarial stage on
the engine's GAN chunk, the Jigsaw table stored with the run, a finished run read back;
and the streamed corpora of whole volumes (methods/dira/volumes.py) against plain code."""

from __future__ import annotations

import flax
import numpy as np
import pytest

from medda_jax.errors import DataError
from medda_jax.methods.dira import paper, volumes
from medda_jax.methods.dira.pretrain import CHAINS, Pretrainer, Settings, run_name, stage_runs

SIZE = 8


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _corpus(ids):
  return np.stack([np.random.default_rng([5, int(i)]).random((SIZE,) * 3, np.float32)
                   for i in ids])


def _settings(**kw):
  base = dict(features=2, levels=2, size=SIZE, batch_size=2, steps=2, learning_rate=1e-3,
              weights=paper.LossWeights(), permutations=6, steps_per_call=1,
              checkpoint_every=1, inner_loop="host")
  return Settings(**{**base, **kw})


def test_stage_runs_share_prefixes_and_come_parent_first():
  assert stage_runs(tuple(CHAINS)) == [("D",), ("D", "DR"), ("D", "DR", "DRA"), ("DRA",)]
  assert stage_runs(("((D)+R)+A",)) == [("D",), ("D", "DR"), ("D", "DR", "DRA")]
  assert run_name("jigsaw", ("D", "DR")) == "jigsaw_D-DR"


@pytest.fixture(scope="module")
def chain_runs(tmp_path_factory):
  """D, then DR from D with a vanishing learning rate, then DRA from DR: (pretrainer,
  D's params, DR's params read back, DRA's generator side)."""
  workdir = tmp_path_factory.mktemp("dira_pretrain")
  pre = Pretrainer(_settings(), _corpus, "noise", workdir)
  d, curve = pre.run("jigsaw", ("D",), None)
  assert len(curve) == 2 and np.all(np.isfinite(curve))
  still = Pretrainer(_settings(learning_rate=1e-12), _corpus, "noise", workdir)
  dr, _ = still.run("jigsaw", ("D", "DR"), pre.saved("jigsaw", ("D",)))
  dra, curve = pre.run("jigsaw", ("D", "DR", "DRA"), pre.saved("jigsaw", ("D", "DR")))
  assert np.all(np.isfinite(curve))
  return pre, d, dr, dra


def test_each_stage_starts_from_its_parents_checkpoint(chain_runs):
  """A DR run with a vanishing learning rate ends where it started: D's encoder and head
  as read back from D's checkpoint, and a fresh decoder."""
  pre, d, dr, _ = chain_runs
  saved = pre.saved("jigsaw", ("D",))
  for a, b in zip(_flat(saved).values(), _flat(d).values()):
    np.testing.assert_array_equal(a, b)
  start = _flat(pre.init("jigsaw", ("D", "DR"), 0))
  for path, value in _flat(dr).items():
    want = _flat(saved).get(path, start[path])
    np.testing.assert_allclose(value, want, atol=1e-8, err_msg=path)
  assert "decoder" in dr and "decoder" not in saved


def test_the_adversarial_stage_trains_everything_and_reads_back_its_generator(chain_runs):
  pre, _, dr, dra = chain_runs
  assert set(dra) == {"encoder", "head", "decoder"}
  moved = [not np.allclose(a, b) for a, b in zip(_flat(dra).values(), _flat(dr).values())]
  assert all(moved[:1]) and sum(moved) > len(moved) // 2
  saved = pre.saved("jigsaw", ("D", "DR", "DRA"))
  for a, b in zip(_flat(saved).values(), _flat(dra).values()):
    np.testing.assert_array_equal(a, b)


def test_the_jigsaw_table_is_stored_with_every_run_and_a_rerun_resumes(chain_runs):
  pre, d, _, _ = chain_runs
  for chain in (("D",), ("D", "DR"), ("D", "DR", "DRA")):
    np.testing.assert_array_equal(np.load(pre.directory("jigsaw", chain) / "permutations.npy"),
                                  pre.table)
  assert pre.table.shape == (6, 8)
  again, curve = pre.run("jigsaw", ("D",), None)  # finished: restored, not retrained
  assert len(curve) == 2
  for a, b in zip(_flat(again).values(), _flat(d).values()):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- volumes
def _write_volumes(folder):
  import nibabel as nib

  from medda_jax.data import metaimage
  folder.mkdir()
  rng = np.random.default_rng(0)
  arrays = {}
  for name, shape in (("a.nii.gz", (20, 18, 16)), ("b.nii", (10, 12, 14))):
    data = rng.normal(0, 300, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / name))
    arrays[name] = data.transpose(2, 1, 0)  # read back in (z, y, x)
  data = rng.normal(0, 300, (16, 16, 16)).astype(np.float32)
  (folder / "sub").mkdir()
  metaimage.write_mhd(str(folder / "sub" / "c.mhd"), data, (1.0, 1.0, 1.0))
  arrays["sub/c.mhd"] = data
  return arrays


def test_your_volumes_are_listed_read_and_cropped_as_plain_code_says(tmp_path):
  arrays = _write_volumes(tmp_path / "vols")
  paths = volumes.list_volumes(tmp_path / "vols")
  assert [p.split("vols/")[1] for p in paths] == ["a.nii.gz", "b.nii", "sub/c.mhd"]
  (tmp_path / "list.csv").write_text("path\nvols/b.nii\nvols/sub/c.mhd\n")
  assert volumes.list_volumes(tmp_path / "list.csv") == paths[1:]
  corpus = volumes.VolumeCorpus(paths, 12, "ct", crops_per_volume=2, seed=0)
  cubes = corpus(np.arange(6))
  for i in range(6):
    index = corpus._volume_of(i)
    assert corpus._volume_of(i - i % 2) == index  # consecutive pairs share a volume
    v = arrays[paths[index].split("vols/")[1]]
    v = (np.clip(v, -1000, 1000) + 1000) / 2000
    rng = np.random.default_rng([0, 89, i])
    corner = [int(rng.integers(0, max(n - 12, 0) + 1)) for n in v.shape]
    want = np.full((12, 12, 12), v.min(), np.float32)
    part = v[corner[0]:corner[0] + 12, corner[1]:corner[1] + 12, corner[2]:corner[2] + 12]
    want[:part.shape[0], :part.shape[1], :part.shape[2]] = part
    np.testing.assert_allclose(cubes[i], want, rtol=1e-6, err_msg=str(i))
  assert {corpus._volume_of(2 * k) for k in range(3)} == {0, 1, 2}  # one pass visits all


def test_mr_scaling_and_bad_corpora_are_one_line_errors(tmp_path):
  v = np.array([0.0, 10.0, 20.0, 30.0, 1000.0], np.float32)
  out = volumes.normalise(v, "mr")
  assert out[0] == 0.0 and out[-1] == 1.0 and 0.0 < out[2] < 1.0
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="holds no volume"):
    volumes.list_volumes(tmp_path / "empty")
  (tmp_path / "bad.csv").write_text("file\nx.nii\n")
  with pytest.raises(DataError, match="'path' column"):
    volumes.list_volumes(tmp_path / "bad.csv")
  (tmp_path / "gone.csv").write_text("path\nmissing.nii\n")
  with pytest.raises(DataError, match="missing"):
    volumes.list_volumes(tmp_path / "gone.csv")


def test_rubik_stage_trains_one_head_per_label_and_reads_back(tmp_path):
  """Rubik's Cube: the arrangement head and eight turn heads, all trained on [B, 9] labels
  (each head's kernel moves), and the saved run reads back as it ended."""
  pre = Pretrainer(_settings(), _corpus, "noise", tmp_path)
  start = _flat(pre.init("rubik", ("D",), 0))
  params, curve = pre.run("rubik", ("D",), None)
  assert np.all(np.isfinite(curve))
  heads = sorted(k for k in _flat(params) if k.startswith("head/") and k.endswith("/kernel"))
  assert heads == sorted(f"head/dense{i}/kernel" for i in range(9))
  assert _flat(params)["head/dense0/kernel"].shape[-1] == 6
  for key in heads:
    assert _flat(params)[key].shape[-1] == (6 if key == "head/dense0/kernel" else 4)
    assert not np.allclose(_flat(params)[key], start[key]), key
  for key, value in _flat(pre.saved("rubik", ("D",))).items():
    np.testing.assert_array_equal(value, _flat(params)[key], err_msg=key)


def test_cluster_labels_partition_by_direction():
  """k-means of L2-normalised rows: two directions give two clusters whatever the rows'
  lengths, and the labels are a function of the seed."""
  rng = np.random.default_rng(0)
  a = np.array([1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(10, 3))
  b = np.array([0.0, 1.0, 0.0]) + 0.01 * rng.normal(size=(10, 3))
  x = np.concatenate([a * rng.uniform(0.1, 10, (10, 1)), b * rng.uniform(0.1, 10, (10, 1))])
  labels = paper.cluster_labels(x, 2, seed=3)
  assert labels.dtype == np.int32 and len(set(labels[:10])) == len(set(labels[10:])) == 1
  assert labels[0] != labels[10]
  np.testing.assert_array_equal(labels, paper.cluster_labels(x, 2, seed=3))
  with pytest.raises(Exception, match="clusters"):
    paper.cluster_labels(x, 21, seed=0)


def test_deep_clustering_labels_are_kmeans_of_the_encoders_features_and_the_head_is_redrawn(
    tmp_path):
  """The clustering of a stage run, against plain code: each pool cube's pooled encoder
  features one by one, `cluster_labels` of them; the encoder is untouched, the head new;
  batches get each sample's cluster. Then a short run through two clusterings."""
  import optax

  from medda_jax.engine.supervised import TrainState
  from medda_jax.methods.dira.pretrain import Reclustering
  s = _settings(clusters=3, cluster_pool=8, steps=8)
  pre = Pretrainer(s, _corpus, "noise", tmp_path)
  model = pre.model("deep_clustering", "D")
  params = pre.init("deep_clustering", ("D",), 5)
  state = TrainState.create(params, optax.adam(1e-3))
  hook = Reclustering(pre, model, False, total_calls=8)
  new = hook.recluster(state, epoch=0)
  feats = []
  for i in range(8):
    cube = _corpus([i])[..., None]
    bottleneck, _ = model.apply({"params": params}, cube,
                                method=lambda m, v: m.encoder(v))
    feats.append(np.asarray(bottleneck).mean(axis=(1, 2, 3))[0])
  want = paper.cluster_labels(np.stack(feats), 3, seed=0)
  np.testing.assert_array_equal(hook.labels, want)
  for key, value in _flat(new.params).items():
    if key.startswith("encoder/"):
      np.testing.assert_array_equal(value, _flat(params)[key], err_msg=key)
  assert not np.allclose(new.params["head"]["dense"]["kernel"],
                         params["head"]["dense"]["kernel"])
  batch = {"sample": np.array([[7, 2]]), "image": np.zeros(1)}
  assert hook.labelled(lambda b: b)(batch)["label"].tolist() == [[want[7], want[2]]]
  assert hook.calls_per_epoch == 4
  out, curve = pre.run("deep_clustering", ("D",), None)
  assert len(curve) == 8 and np.all(np.isfinite(curve))
  assert out["head"]["dense"]["kernel"].shape[-1] == 3

