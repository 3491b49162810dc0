"""The AIVA experiment: config checks, data, source (and target) pre-training, AdaBN, AIVA
fine-tuning with per-period re-clustering, evaluation and the driver.

Target labels are used only to score the models (and to train the target-model upper
bound); the adaptation pipeline receives (image, volume id, slice index) of target
slices. The reported AIVA model is the last one: nothing is selected on target labels.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medda_jax import config_utils as cu
from medda_jax import files, metrics as metrics_lib
from medda_jax.data import mixed, prepared, user_seg
from medda_jax.data.volumes import Volume
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods.aiva import paper
from medda_jax.methods.aiva.report import COLUMNS, label_of, summarise, table_markdown
from medda_jax.methods.gradient_transfer.experiment import load_domains, split_site, user_site
from medda_jax.models import unet2d_res

RESULTS_FILE = "aiva_runs.json"
EMBEDDINGS = "embeddings"


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", ("demo_skull", "cc359", "none"))
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  user_seg.check_site_fields(c)
  if c.data.source == "cc359" and not c.data.root and not all(
      user_site(c, s) for p in c.data.pairs for s in p):
    raise ConfigError("config.data.root must name the CC359 folder (meta.csv + images/ + "
                      "masks/, or Original/ + Silver-standard/), or with config.data.layout="
                      "'tfds' the TFDS data dir, when config.data.source='cc359'")
  cu.check_range(c, "data.crop", 16, 1024, integer=True)
  if c.data.crop % 8:
    raise ConfigError(f"config.data.crop={c.data.crop} must be divisible by 8 (three "
                      "down-samplings of the U-Net)")
  cu.check_range(c, "data.test_subjects", 1, integer=True)
  cu.check_range(c, "data.train_subjects", 0, integer=True)
  cu.check_range(c, "data.subjects_per_domain", 2, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  if not c.data.pairs:
    raise ConfigError("config.data.pairs must list at least one (source, target) site pair")
  for pair in c.data.pairs:
    if len(pair) != 2 or pair[0] == pair[1]:
      raise ConfigError(f"config.data.pairs entry {pair!r} must be two different site names")
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "model.features", 1, 512, integer=True)
  for field in ("pretrain.steps", "pretrain.batch_size", "finetune.steps",
                "finetune.source_batch", "finetune.target_batch", "adabn.passes"):
    cu.check_range(c, field, 1, integer=True)
  for field in ("pretrain.learning_rate", "finetune.learning_rate"):
    cu.check_range(c, field, 0.0, low_inclusive=False)
  cu.check_range(c, "pretrain.power", 0.0)
  cu.check_range(c, "finetune.decay_factor", 0.0, 1.0, low_inclusive=False)
  for stage in ("pretrain", "finetune"):
    cu.check_range(c, f"{stage}.momentum", 0.0, 0.999999)
    cu.check_range(c, f"{stage}.weight_decay", 0.0)
  if len(c.finetune.decay_steps) != 2 or not all(isinstance(s, int) for s in
                                                  c.finetune.decay_steps):
    raise ConfigError(f"config.finetune.decay_steps={tuple(c.finetune.decay_steps)!r} must be "
                      "two integer steps (lr x decay_factor at each)")
  cu.check_range(c, "aiva.k", 2, integer=True)
  cu.check_range(c, "aiva.epoch_every", 1, integer=True)
  cu.check_choice(c, "aiva.loss", paper.LOSS_FORMS)
  cu.check_range(c, "aiva.acc_batches", 1, integer=True)
  cu.check_range(c, "aiva.dist_loss_lambda", 0.0, low_inclusive=False)
  cu.check_range(c, "aiva.lambda_batches", 1, integer=True)
  cu.check_range(c, "aiva.pca_dim", 2, integer=True)
  cu.check_range(c, "aiva.tsne_iterations", 250, integer=True)
  cu.check_range(c, "eval.tolerance_mm", 0.0, low_inclusive=False)
  cu.validate_shared(c)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  spc, every = c.engine.steps_per_call, c.aiva.epoch_every
  if c.finetune.steps <= every:
    raise ConfigError(f"config.finetune.steps={c.finetune.steps} must exceed config.aiva."
                      f"epoch_every={every} (the first period only collects features)")
  for what, steps in (("pretrain.steps", c.pretrain.steps), ("aiva.epoch_every", every),
                      ("finetune.steps - aiva.epoch_every", c.finetune.steps - every)):
    if steps % spc:
      raise ConfigError(f"config.engine.steps_per_call={spc} must divide config.{what} "
                        f"({steps})")


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class SlicePlan:
  """The slices a sampler draws from: per slice its (volume id, slice index) and its
  position in the volume (slice index / slices), the AIVA slice-number feature."""

  volumes: tuple[Volume, ...]
  volume_id: np.ndarray
  slice_index: np.ndarray

  @classmethod
  def of(cls, volumes) -> "SlicePlan":
    volumes = tuple(volumes)
    vid = np.concatenate([np.full(v.num_slices, i) for i, v in enumerate(volumes)])
    sid = np.concatenate([np.arange(v.num_slices) for v in volumes])
    return cls(volumes, vid.astype(np.int32), sid.astype(np.int32))

  def __len__(self) -> int:
    return len(self.volume_id)

  def position(self, flat) -> np.ndarray:
    n = np.array([self.volumes[v].num_slices for v in self.volume_id[flat]], np.float32)
    return self.slice_index[flat].astype(np.float32) / n


def draw_slices(plan: SlicePlan, flat: np.ndarray, rng, crop: int, labelled: bool):
  """Images [n, crop, crop, 1] (and masks [n, crop, crop, 1] when `labelled`) of the
  slices `flat` (random crops, padded as the other methods' samplers)."""
  images, masks = [], []
  for f in flat:
    vol = plan.volumes[plan.volume_id[f]]
    s = int(plan.slice_index[f])
    label = vol.mask[s] if labelled else np.zeros(vol.image.shape[1:], np.uint8)
    x, y = mixed.random_crop(vol.image[s][..., None], label, crop, rng)
    images.append(x)
    masks.append(y)
  images = np.stack(images).astype(np.float32)
  return (images, np.stack(masks)[..., None].astype(np.float32)) if labelled else images


class AdaptationBatches:
  """The fine-tuning stream, a pure function of (seed, iteration): source (image, label,
  volume id, slice index) and target (image, volume id, slice index); no target label."""

  def __init__(self, source: SlicePlan, target: SlicePlan, c, seed: int):
    self.source, self.target, self.seed = source, target, seed
    self.crop = c.data.crop
    acc = c.aiva.acc_batches if c.aiva.loss == "macro_batch" else 1
    self.source_batch = c.finetune.source_batch * acc
    self.target_batch = c.finetune.target_batch * acc

  def slices(self, it: int):
    rng = np.random.default_rng([self.seed, it, 17])
    return (rng.integers(len(self.source), size=self.source_batch),
            rng.integers(len(self.target), size=self.target_batch), rng)

  def batch(self, it: int) -> dict:
    src, tgt, rng = self.slices(it)
    images, masks = draw_slices(self.source, src, rng, self.crop, labelled=True)
    return {"images": images, "masks": masks,
            "target_images": draw_slices(self.target, tgt, rng, self.crop, labelled=False),
            "source_slices": src.astype(np.int32), "target_slices": tgt.astype(np.int32),
            "source_volume_id": self.source.volume_id[src],
            "source_slice_index": self.source.slice_index[src],
            "target_volume_id": self.target.volume_id[tgt],
            "target_slice_index": self.target.slice_index[tgt]}

  def dataset(self, first: int, calls: int, steps_per_call: int) -> grain.MapDataset:
    def chunk(k):
      its = range(first + k * steps_per_call, first + (k + 1) * steps_per_call)
      batches = [self.batch(i) for i in its]
      return {key: np.stack([b[key] for b in batches]) for key in
              ("images", "masks", "target_images", "target_slices")}
    return grain.MapDataset.range(calls).map(chunk)


def embedding_path(workdir: pathlib.Path, run: str) -> pathlib.Path:
  """Where a run's latest clustering (t-SNE embedding, clusters, matching) is kept."""
  return workdir / EMBEDDINGS / f"{run.replace('/', '_').replace('>', '')}.npz"


def grain_iter(ds: grain.MapDataset):
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


# --------------------------------------------------------------------------- experiment
class Experiment:
  """What the runs share: sites, model, compiled functions, writer."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c, self.workdir = c, workdir
    self.domains = load_domains(c, workdir)
    for pair in c.data.pairs:
      for site in pair:
        if site not in self.domains.domains:
          raise ConfigError(f"site {site!r} in config.data.pairs is not in the data; "
                            f"available: {self.domains.names()}")
    sites = sorted({s for pair in c.data.pairs for s in pair})
    self.splits = {}
    for s in sites:
      split = split_site(self.domains[s], c.data.test_subjects, c.data.split_seed, s)
      if c.data.train_subjects:
        split = dataclasses.replace(split, train=split.train[:c.data.train_subjects])
      self.splits[s] = split
    self.inner_loop = cu.inner_loop(c)
    self.model = unet2d_res.ResUNet2D(features=c.model.features, out_channels=2,
                                      dtype=cu.compute_dtype(c))
    self.writer = MetricWriter(workdir)
    example = jnp.zeros((1, c.data.crop, c.data.crop, 1))
    self._init = compile_init(lambda k: self.model.init(k, example, train=False))
    self._predict = batch_predictor(lambda v, x: self.model.apply(v, x, train=False),
                                    c.engine.eval_batch_size)
    self._bns = jax.jit(lambda v, x, train: paper.apply_with_bns(self.model, v, x, train)[1:],
                        static_argnums=2)
    self._align = jax.jit(paper.alignment_loss, static_argnums=3)
    self._pretrain_step = None
    self._adapt_step = None
    self._models: dict[tuple[str, int], TrainState] = {}

  # ---- pre-training (source model; target model = upper bound)
  def pretrain(self, site: str, seed: int) -> TrainState:
    """The model trained with labels on `site` (restored when its checkpoint is final)."""
    if (site, seed) not in self._models:
      c, p = self.c, self.c.pretrain
      variables = self._init(jax.random.PRNGKey(seed))
      tx = paper.sgd_nesterov(p.learning_rate, p.steps, power=p.power, momentum=p.momentum,
                              weight_decay=p.weight_decay)
      state = TrainState.create(variables["params"], tx, variables["batch_stats"])
      if self._pretrain_step is None:
        self._pretrain_step = build_train_chunk(self.segmentation_loss, tx, self.inner_loop)
      spc = c.engine.steps_per_call
      cfg = mixed.MixedBatchConfig(batch_size=p.batch_size, steps_per_epoch=p.steps,
                                   num_epochs=1, schedule="source_only", crop=c.data.crop,
                                   seed=seed)
      ds = mixed.mixed_batches(mixed.SlicePool.of(self.splits[site].train), None, cfg, spc)
      name = f"pretrain_{site}_seed{seed}"
      ckpt = Checkpointer(self.workdir / "checkpoints" / name)
      try:
        result = run_loop(name, state, self._pretrain_step, grain_iter(ds),
                          total_calls=p.steps // spc, steps_per_call=spc, checkpointer=ckpt,
                          writer=self.writer, checkpoint_every=c.engine.checkpoint_every,
                          prepare=lambda b: {"images": b["images"], "masks": b["masks"]})
      finally:
        ckpt.close()
      self._models[(site, seed)] = result.state
    return self._models[(site, seed)]

  def segmentation_loss(self, params, model_state, batch, rng):
    del rng
    logits, mutated = self.model.apply({"params": params, "batch_stats": model_state},
                                       batch["images"], train=True, mutable=["batch_stats"])
    return paper.segmentation_loss(logits, batch["masks"]), (mutated["batch_stats"], {})

  # ---- features
  def features(self, variables, images: np.ndarray, train: bool) -> np.ndarray:
    return np.asarray(self._bns(variables, jnp.asarray(images), train)[0])

  def period_features(self, variables, stream: AdaptationBatches, first: int, last: int,
                      train: bool):
    """BNS features of the slices drawn in iterations [first, last), each mini-batch
    forwarded as it was drawn (train=True: batch statistics, as in the training step; the
    running statistics are not changed). The last feature of each distinct slice is kept.
    Returns ({source slice: feature}, {target slice: feature})."""
    source, target = {}, {}
    for it in range(first, last):
      b = stream.batch(it)
      for key, images, slices in ((source, b["images"], b["source_slices"]),
                                  (target, b["target_images"], b["target_slices"])):
        for s, f in zip(slices, self.features(variables, images, train)):
          key[int(s)] = f
    return source, target

  def cluster(self, source: dict, target: dict, stream: AdaptationBatches, seed: int,
              where: str) -> tuple[paper.Clustering, np.ndarray, np.ndarray]:
    c = self.c
    s_ids, t_ids = np.array(sorted(source)), np.array(sorted(target))
    if min(len(s_ids), len(t_ids)) < c.aiva.k:
      raise ConfigError(f"config.aiva.k={c.aiva.k} clusters need at least {c.aiva.k} distinct "
                        f"slices of each site per period; {where} drew {len(s_ids)} source and "
                        f"{len(t_ids)} target slices (raise config.aiva.epoch_every or lower k)")
    pos = ((stream.source.position(s_ids), stream.target.position(t_ids))
           if c.aiva.use_slice_num else (None, None))
    clustering = paper.cluster_period(np.stack([source[i] for i in s_ids]),
                                      np.stack([target[i] for i in t_ids]), c.aiva.k,
                                      source_position=pos[0], target_position=pos[1],
                                      pca_dim=c.aiva.pca_dim,
                                      tsne_iterations=c.aiva.tsne_iterations, seed=seed)
    return clustering, s_ids, t_ids

  def save_embedding(self, run: str, clustering: paper.Clustering, period: int) -> None:
    path = embedding_path(self.workdir, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io
    buffer = io.BytesIO()
    np.savez(buffer, embedding=clustering.embedding, source_ids=clustering.source_ids,
             target_ids=clustering.target_raw_ids, matching=clustering.matching,
             source_centres=clustering.source_centres,
             target_centres=clustering.target_centres, period=period)
    files.write_bytes(path, buffer.getvalue())

  # ---- AdaBN
  def adabn(self, state: TrainState, target: SlicePlan, seed: int) -> dict:
    """The source model with its BatchNorm statistics re-estimated on the target training
    slices (train-mode passes of target mini-batches, no parameter update)."""
    c = self.c
    stats = jax.tree.map(jnp.array, state.model_state)
    rng = np.random.default_rng([seed, 23])
    bt = c.finetune.target_batch
    for _ in range(c.adabn.passes):
      order = rng.permutation(len(target))
      for start in range(0, len(order) - bt + 1, bt):
        images = draw_slices(target, order[start:start + bt], rng, c.data.crop, labelled=False)
        stats = self._bns({"params": state.params, "batch_stats": stats},
                          jnp.asarray(images), True)[1]
    return {"params": state.params, "batch_stats": stats}

  # ---- AIVA fine-tuning
  def adapt(self, source_state: TrainState, src: str, tgt: str, seed: int, run: str) -> dict:
    """AIVA fine-tuning of the source model; returns the last model's variables."""
    c, f = self.c, self.c.finetune
    every, spc = c.aiva.epoch_every, c.engine.steps_per_call
    stream = AdaptationBatches(SlicePlan.of(self.splits[src].train),
                               SlicePlan.of(self.splits[tgt].train), c, seed)
    params, stats = jax.tree.map(jnp.array, (source_state.params, source_state.model_state))
    variables = {"params": params, "batch_stats": stats}
    # The optimizer counts updates; the reference's lr drops are at iterations that include
    # the collect-only first period.
    boundaries = tuple(int(b) - every for b in f.decay_steps)
    tx = paper.sgd_nesterov(f.learning_rate, f.steps - every, boundaries=boundaries,
                            factor=f.decay_factor, momentum=f.momentum,
                            weight_decay=f.weight_decay, params=params)
    calls = (f.steps - every) // spc
    ckpt_dir = (self.workdir / "checkpoints" / "runs" / run.replace("/", "_").replace(">", "")
                if calls > c.engine.checkpoint_every else None)
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    resuming = ckpt is not None and ckpt.latest_step() is not None
    dim = 8 * c.model.features * (c.data.crop // 8) ** 2  # the tap: 8n channels at 1/8
    if resuming:  # shapes only: the checkpoint holds the clustering and lambda
      aiva = {"nu": jnp.zeros((c.aiva.k, dim)), "lam": jnp.zeros(()),
              "target_cluster": jnp.full((len(stream.target),), -1, jnp.int32)}
    else:
      # Period 1: collect features only (model in eval mode, no update), then cluster.
      source, target = self.period_features(variables, stream, 0, every, train=False)
      clustering, _, t_ids = self.cluster(source, target, stream, seed, "the first period")
      self.save_embedding(run, clustering, 0)
      aiva = self.clustering_state(clustering, t_ids, len(stream.target))
      aiva["lam"] = jnp.asarray(self.auto_lambda(variables, stream, aiva), jnp.float32)
    state = TrainState.create(params, tx, dict(aiva, batch_stats=stats))
    if self._adapt_step is None:
      self._adapt_step = build_train_chunk(paper.adaptation_loss(self.model, c.aiva.loss), tx,
                                           self.inner_loop)
    hook = ReCluster(self, stream, run, seed, every // spc, calls)
    try:
      result = run_loop(run, state, self._adapt_step,
                        grain_iter(stream.dataset(every, calls, spc)), total_calls=calls,
                        steps_per_call=spc, checkpointer=ckpt, writer=self.writer,
                        checkpoint_every=c.engine.checkpoint_every, show_progress=False,
                        hook=hook)
    finally:
      if ckpt is not None:
        ckpt.close()
    if ckpt_dir is not None:
      shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run's result is recorded next
    return {"params": result.state.params,
            "batch_stats": result.state.model_state["batch_stats"]}

  @staticmethod
  def clustering_state(clustering: paper.Clustering, t_ids: np.ndarray, n_target: int) -> dict:
    table = np.full(n_target, -1, np.int32)
    table[t_ids] = clustering.target_ids
    return {"nu": jnp.asarray(clustering.nu), "target_cluster": jnp.asarray(table)}

  def auto_lambda(self, variables, stream: AdaptationBatches, aiva: dict) -> float:
    """dist_loss_lambda / mean alignment loss of the first fine-tuning mini-batches (their
    train-mode BNS features under the source model)."""
    c = self.c
    every = c.aiva.epoch_every
    losses = []
    for it in range(every, min(every + 10 * c.aiva.lambda_batches, c.finetune.steps)):
      b = stream.batch(it)
      feats = self._bns(variables, jnp.asarray(b["target_images"]), True)[0]
      ids = aiva["target_cluster"][b["target_slices"]]
      losses.append(float(self._align(feats, ids, aiva["nu"], c.aiva.loss)))
      if sum(x > 0 for x in losses) >= c.aiva.lambda_batches:
        break
    return paper.auto_lambda(losses, c.aiva.dist_loss_lambda, c.aiva.lambda_batches)

  # ---- evaluation
  def evaluate(self, variables, volumes: list[Volume]) -> dict[str, float]:
    sdice, dice = [], []
    for v in volumes:
      s, h, w = v.image.shape
      ph, pw = (-h) % 8, (-w) % 8
      image = np.pad(v.image, ((0, 0), (0, ph), (0, pw)), constant_values=v.image.min())
      logits = self._predict(variables, image[..., None].astype(np.float32))[:, :h, :w]
      pred = logits[..., 1] > logits[..., 0]
      gt = v.mask.astype(bool)
      sdice.append(metrics_lib.surface_dice(pred, gt, v.spacing, self.c.eval.tolerance_mm))
      dice.append(metrics_lib.dice_3d(pred, gt))
    return {"sdice": float(np.mean(sdice) * 100), "dice": float(np.mean(dice) * 100),
            "per_volume_sdice": [float(x * 100) for x in sdice]}


class ReCluster:
  """run_loop hook: at the end of every period (epoch_every steps) the BNS features of the
  slices drawn in it are re-clustered and matched; the new cluster table and source means
  replace the old ones in the train state (so a checkpoint carries them)."""

  def __init__(self, exp: Experiment, stream: AdaptationBatches, run: str, seed: int,
               calls_per_period: int, total_calls: int):
    self.exp, self.stream, self.run, self.seed = exp, stream, run, seed
    self.calls_per_period, self.total_calls = calls_per_period, total_calls

  def after_call(self, state, calls_done: int):
    if calls_done % self.calls_per_period or calls_done == self.total_calls:
      return state, False
    c = self.exp.c
    every, spc = c.aiva.epoch_every, c.engine.steps_per_call
    end = every + calls_done * spc
    variables = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
    source, target = self.exp.period_features(variables, self.stream, end - every, end,
                                              train=True)
    period = calls_done // self.calls_per_period
    clustering, _, t_ids = self.exp.cluster(source, target, self.stream, self.seed + period,
                                            f"period {period + 1}")
    self.exp.save_embedding(self.run, clustering, period)
    aiva = Experiment.clustering_state(clustering, t_ids, len(self.stream.target))
    return state.replace(model_state=dict(state.model_state, **aiva)), False

  def get_state(self):
    return {}

  def set_state(self, value):
    del value


# --------------------------------------------------------------------------- driver
def run_key(src: str, tgt: str, column: str, seed: int) -> str:
  return f"{src}->{tgt}/{column}/{seed}"


def check_cluster_count(exp: Experiment) -> None:
  """Before any training: every first period must draw at least k distinct slices of
  each site (the batches are a function of the seed, so this is known in advance)."""
  c = exp.c
  for src, tgt in c.data.pairs:
    for seed in c.seeds:
      stream = AdaptationBatches(SlicePlan.of(exp.splits[src].train),
                                 SlicePlan.of(exp.splits[tgt].train), c, seed)
      drawn = [stream.slices(it)[:2] for it in range(c.aiva.epoch_every)]
      counts = [len(np.unique(np.concatenate([d[i] for d in drawn]))) for i in (0, 1)]
      if min(counts) < c.aiva.k:
        raise ConfigError(f"config.aiva.k={c.aiva.k} clusters need at least {c.aiva.k} distinct "
                          f"slices of each site per period, but a period of config.aiva."
                          f"epoch_every={c.aiva.epoch_every} steps draws {counts[0]} of {src} "
                          f"and {counts[1]} of {tgt} (raise epoch_every or lower k)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  used = {s for pair in c.data.pairs for s in pair}
  user_sites = sorted(s for s in used if user_site(c, s))
  label = label_of(c.data.source, user_sites, len(user_sites) < len(used))
  print(f"data: {exp.domains.description}\npairs {list(map(tuple, c.data.pairs))}; seeds "
        f"{list(c.seeds)}; k={c.aiva.k}; loss {c.aiva.loss}", file=sys.stderr)
  check_cluster_count(exp)
  runs = RunTable(workdir / RESULTS_FILE)
  columns = [col for col in COLUMNS if col != "target_model" or c.bounds.target_model]
  for src, tgt in c.data.pairs:
    for seed in c.seeds:
      test = exp.splits[tgt].test
      if all(runs.done(run_key(src, tgt, col, seed)) for col in columns):
        continue
      source_state = exp.pretrain(src, seed)
      source_vars = {"params": source_state.params, "batch_stats": source_state.model_state}
      key = run_key(src, tgt, "source_model", seed)
      if not runs.done(key):
        runs.record(key, exp.evaluate(source_vars, test))
      key = run_key(src, tgt, "adabn", seed)
      if not runs.done(key):
        runs.record(key, exp.evaluate(exp.adabn(source_state, SlicePlan.of(
            exp.splits[tgt].train), seed), test))
      key = run_key(src, tgt, "aiva", seed)
      if not runs.done(key):
        runs.record(key, exp.evaluate(exp.adapt(source_state, src, tgt, seed, key), test))
      key = run_key(src, tgt, "target_model", seed)
      if c.bounds.target_model and not runs.done(key):
        target_state = exp.pretrain(tgt, seed)
        runs.record(key, exp.evaluate({"params": target_state.params,
                                       "batch_stats": target_state.model_state}, test))

  table = summarise(runs.runs, c, columns)
  final = {f"target_sdice/{tgt}/{col}": cell[0] for tgt, row in table.items()
           for col, cell in row.items()}
  files.write_text(workdir / "results.md", table_markdown(table, c, columns, label))
  files.write_text(workdir / "results.json", json.dumps(
      {"label": label, "variant": c.variant, "pairs": [list(p) for p in c.data.pairs],
       "seeds": list(c.seeds), "k": c.aiva.k, "loss": c.aiva.loss,
       "use_slice_num": c.aiva.use_slice_num, "tolerance_mm": c.eval.tolerance_mm,
       "table": table}, indent=1))
  from medda_jax.methods.aiva import figures
  src, tgt = c.data.pairs[0]
  embedding = embedding_path(workdir, run_key(src, tgt, "aiva", c.seeds[0]))
  if embedding.exists():
    figures.embedding_figure(workdir / "aiva_tsne.png", embedding,
                             title=f"AIVA clusters {src} -> {tgt}, last clustering"
                             + (" (demo data)" if "DEMO" in label else ""))
  exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
