"""Stepwise incremental pre-training runs (spec section c): every stage of every strategy is
a resumable engine run with its own orbax checkpoint, initialised from the checkpoint of the
stage before it (`paper.graft_stage`).

Strategies and their chains of stages:
  D           D
  (D)+R       D -> DR
  ((D)+R)+A   D -> DR -> DRA
  D+R+A       DRA from scratch (the paper's end-to-end baseline)
A chain's prefix is shared: `(D)+R` and `((D)+R)+A` grow from the same D run, and
`((D)+R)+A` from the same DR run, as the paper adds one ingredient at a time.

D and DR train on the engine's supervised chunk; DRA on its GAN chunk (adversary first,
then encoder + head + decoder). Samples are functions of (seed, sample index) and the
corpus, so a killed stage resumes where it stopped and redraws the same batches.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax import parallel
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.gan import GANState, build_gan_chunk, shard_batches
from medda_jax.engine.graft import pretrained_params
from medda_jax.engine.loop import run_loop
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.trainer import call_batches
from medda_jax.errors import ConfigError
from medda_jax.methods.dira import paper
from medda_jax.models.united3d import Adversary3D, United

CHAINS = {"D": ("D",), "(D)+R": ("D", "DR"), "((D)+R)+A": ("D", "DR", "DRA"),
          "D+R+A": ("DRA",)}


def stage_runs(strategies) -> list[tuple[str, ...]]:
  """The stage runs the strategies need, each a chain prefix, every prefix once, parents
  before children."""
  runs: list[tuple[str, ...]] = []
  for strategy in strategies:
    chain = CHAINS[strategy]
    for k in range(1, len(chain) + 1):
      if chain[:k] not in runs:
        runs.append(chain[:k])
  return runs


def run_name(task: str, chain: tuple[str, ...]) -> str:
  """e.g. rotation_D-DR-DRA; the end-to-end baseline is rotation_DRA."""
  return f"{task}_{'-'.join(chain)}"


@dataclasses.dataclass(frozen=True)
class Settings:
  features: int
  levels: int
  size: int  # cube side in voxels
  batch_size: int
  steps: int  # updates per stage
  learning_rate: float
  weights: paper.LossWeights
  permutations: int  # the permutation table of Jigsaw and Rubik's Cube
  seed: int = 0
  steps_per_call: int = 1
  checkpoint_every: int = 100  # calls
  inner_loop: str = "scan"
  head_pool: str = "mean"  # the pretext head: "mean" (global average) or "flatten"
  clusters: int = 100  # Deep Clustering's k
  cluster_pool: int = 1000  # Deep Clustering's cubes (sample ids 0 .. pool - 1), one epoch
  words: int = 200  # TransVW's visual words


class Pretrainer:
  """The stage runs of one corpus: `corpus(sample_ids) -> float32 [n, S, S, S]` cubes in
  [0, 1], each a function of its sample id; TransVW's runs draw theirs and their labels
  from `words` (a `visual_words.VisualWords` of the same corpus's patients)."""

  def __init__(self, settings: Settings, corpus: Callable[[np.ndarray], np.ndarray],
               corpus_name: str, workdir: pathlib.Path, writer=None, words=None):
    self.s, self.corpus, self.corpus_name = settings, corpus, corpus_name
    self.words = words
    self.workdir, self.writer = pathlib.Path(workdir), writer
    self.mesh = parallel.data_mesh()
    # fixed per run and stored with its checkpoints (pitfall 2 of the spec)
    self.table = paper.permutation_table(settings.permutations, seed=settings.seed)

  def classes(self, task: str) -> int | tuple[int, ...]:
    return paper.classes(task, len(self.table), self.s.clusters, self.s.words)

  def model(self, task: str, stage: str) -> United:
    return United(self.s.features, self.s.levels, self.classes(task),
                  restore=paper.stage_restores(stage), head_pool=self.s.head_pool)

  def adversary(self) -> Adversary3D:
    return Adversary3D(self.s.features, levels=min(self.s.levels, 4))

  def directory(self, task: str, chain: tuple[str, ...]) -> pathlib.Path:
    return self.workdir / "pretrain" / run_name(task, chain)

  def _cube(self):
    return jnp.zeros((1, self.s.size, self.s.size, self.s.size, 1))

  def init(self, task: str, chain: tuple[str, ...], seed: int):
    """Fresh parameters of the chain's last stage: the United model's, and for DRA
    {"g": United's, "d": the adversary's}."""
    key = jax.random.PRNGKey(seed)
    x = self._cube()
    params = compile_init(self.model(task, chain[-1]).init)(key, x)["params"]
    if chain[-1] != "DRA":
      return params
    d = compile_init(self.adversary().init)(jax.random.fold_in(key, 1), x, x)["params"]
    return {"g": params, "d": d}

  def batches(self, task: str, total_calls: int, gan: bool):
    s = self.s
    spc, batch = s.steps_per_call, s.batch_size

    def make_batch(k):
      ids = np.arange(k * spc * batch, (k + 1) * spc * batch)
      if task == "deep_clustering":  # epochs over the clustered pool
        ids = ids % s.cluster_pool
      if task == "transvw":
        out = paper.make_batch(self.words(ids), task, s.seed, ids, self.table,
                               labels=self.words.labels(ids))
      else:
        out = paper.make_batch(self.corpus(ids), task, s.seed, ids, self.table)
      if task == "deep_clustering":
        out["sample"] = ids
      shape = (spc, 1, batch) if gan else (spc, batch)
      return {name: v.reshape(*shape, *v.shape[1:]) for name, v in out.items()}

    return call_batches(total_calls, make_batch)

  def run(self, task: str, chain: tuple[str, ...], previous) -> dict:
    """One stage run from `previous` (the parent stage's United parameters, or None);
    returns its United parameters (the generator side for DRA)."""
    s, stage = self.s, chain[-1]
    if task == "transvw" and (self.words is None or len(self.words) != s.words):
      raise ConfigError(f"TransVW's stage runs need the corpus's {s.words} visual words")
    params = self.init(task, chain, s.seed)
    if previous is not None:
      where = f"stage run {run_name(task, chain[:-1])}"
      if stage == "DRA":
        params = {"g": paper.graft_stage(previous, params["g"], where), "d": params["d"]}
      else:
        params = paper.graft_stage(previous, params, where)
    total_calls = max(1, s.steps // s.steps_per_call)
    model = self.model(task, stage)
    if stage == "DRA":
      tx_g, tx_d = optax.adam(s.learning_rate), optax.adam(s.learning_rate)
      state = GANState.create(params, {"g": {}, "d": {}}, tx_g, tx_d,
                              jax.random.PRNGKey(s.seed + 1))
      chunk = build_gan_chunk(paper.critic_loss(model, self.adversary()),
                              paper.generator_loss(model, self.adversary(), s.weights),
                              tx_g, tx_d, inner_loop=s.inner_loop, mesh=self.mesh)
      prepare, loss_key = (lambda b: shard_batches(b, self.mesh)), "g_gen_loss"
    else:
      tx = optax.adam(s.learning_rate)
      state = TrainState.create(params, tx, rng=jax.random.PRNGKey(s.seed + 1))
      chunk = build_train_chunk(paper.stage_loss_fn(model, stage, s.weights), tx,
                                s.inner_loop, mesh=self.mesh)
      loss_key = "loss"

      def prepare(b):
        return parallel.global_batch(b, self.mesh, "data", batch_dim=1, process_local=False)
    directory = self.directory(task, chain)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "permutations.npy", self.table)
    ckpt = Checkpointer(directory)
    hook = None
    if task == "deep_clustering":
      hook = Reclustering(self, model, stage == "DRA", total_calls)
      if ckpt.latest_step() is None:  # a resumed run gets its labels back from the checkpoint
        state = hook.recluster(state, epoch=0)
      prepare = hook.labelled(prepare)
    state = parallel.replicate(state, self.mesh)
    try:
      result = run_loop(
          f"pretrain/{run_name(task, chain)}", state, chunk,
          self.batches(task, total_calls, stage == "DRA"), total_calls=total_calls,
          steps_per_call=s.steps_per_call, checkpointer=ckpt, writer=self.writer,
          checkpoint_every=s.checkpoint_every, loss_key=loss_key,
          prepare=prepare, hook=hook,
          description=f"{task} {'→'.join(chain)} on {self.corpus_name}")
    finally:
      ckpt.close()
    params = jax.device_get(result.state.params)
    return (params["g"] if stage == "DRA" else params), result.curve

  def saved(self, task: str, chain: tuple[str, ...]) -> dict:
    """A finished stage run's United parameters, read back from its checkpoint."""
    like = self.init(task, chain, 0)
    params = pretrained_params(self.directory(task, chain), like,
                               hint=f" (stage run {run_name(task, chain)})")
    return params["g"] if chain[-1] == "DRA" else params


class Reclustering:
  """Deep Clustering's pseudo-labels for one stage run: k-means of the encoder's pooled
  features of the pool's clean cubes (`paper.cluster_labels`), before the first update and
  after every epoch (`cluster_pool` samples); each time the head's parameters are drawn
  afresh (cluster ids carry no order from one clustering to the next; its optimiser moments
  are kept). The labels are checkpointed with the loop (`get_state`), so a resumed run
  trains on the clustering it stopped in. Batches carry sample ids, `labelled` swaps them
  for their clusters just before the step."""

  def __init__(self, pre: Pretrainer, model: United, gan: bool, total_calls: int):
    s = pre.s
    self.pre, self.model, self.gan, self.total_calls = pre, model, gan, total_calls
    self.calls_per_epoch = max(1, -(-s.cluster_pool // (s.batch_size * s.steps_per_call)))
    self.labels = np.zeros(s.cluster_pool, np.int32)
    self.epoch = 0

    def pooled(params, x):
      return model.apply({"params": params}, x,
                         method=lambda m, v: m.encoder(v)[0].mean(axis=(1, 2, 3)))
    self._features = jax.jit(pooled)

  def _united(self, params):
    return params["g"] if self.gan else params

  def recluster(self, state, epoch: int):
    s = self.pre.s
    params = jax.device_get(self._united(state.params))
    features = []
    for start in range(0, s.cluster_pool, 64):
      ids = np.arange(start, min(start + 64, s.cluster_pool))
      cubes = self.pre.corpus(ids)[..., None]
      features.append(np.asarray(self._features(params, cubes)))
    self.labels = paper.cluster_labels(np.concatenate(features), s.clusters,
                                       seed=s.seed * 1000 + epoch)
    self.epoch = epoch
    fresh = self.pre.init("deep_clustering", ("D",), seed=s.seed * 1000 + epoch + 1)["head"]
    united = {**params, "head": fresh}
    params = {**jax.device_get(state.params), "g": united} if self.gan else united
    return dataclasses.replace(state, params=params)

  def labelled(self, prepare):
    def fn(batch):
      batch = dict(batch)
      batch["label"] = self.labels[np.asarray(batch.pop("sample"))]
      return prepare(batch)
    return fn

  def after_call(self, state, calls: int):
    if calls % self.calls_per_epoch == 0 and calls < self.total_calls:
      state = parallel.replicate(self.recluster(state, calls // self.calls_per_epoch),
                                 self.pre.mesh)
    return state, False

  def get_state(self) -> dict:
    return {"labels": self.labels.tolist(), "epoch": self.epoch}

  def set_state(self, saved: dict) -> None:
    self.labels = np.asarray(saved["labels"], np.int32)
    self.epoch = int(saved["epoch"])
