"""The gradient-transfer experiment: config, data, pre-training on the source site, the
fine-tuning methods on every target budget, evaluation, and the driver (see the package's
docstring).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import metrics as metrics_lib
from medda_jax import files, parallel, plots
from medda_jax.data import mixed, prepared, user_seg
from medda_jax.data.volumes import DomainVolumes, Volume, split_ids
from medda_jax.engine.checkpoint import Checkpointer, check_params
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.trainer import KeepBest, variables as state_variables
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.gradient_transfer.report import (METRIC_NAMES, columns, run_key,
                                                        summarise, tables_markdown, upper_key)
from medda_jax.models import unet2d_res
from medda_jax.optim import transfer as transfer_opt


METHODS = ("fta", "ftf", "l2sp", "spottune", "octl", "mmtl")
RESULTS_FILE = "transfer_results.json"


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  if c.get("task", "segmentation") == "classification":  # chest X-rays: classification.py
    from medda_jax.methods.gradient_transfer import classification
    return classification.validate(c)
  cu.check_choice(c, "data.source", ("demo_skull", "cc359", "prostate", "none"))
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  if c.init_from and not pathlib.Path(c.init_from).expanduser().exists():
    raise ConfigError(f"config.init_from={c.init_from!r} does not exist (expected the workdir "
                      "of an earlier run, or one of its pre-training checkpoint folders)")
  user_seg.check_site_fields(c)
  if c.data.source == "cc359" and not c.data.root and _needs_builtin(c):
    raise ConfigError("config.data.root must name the CC359 folder (meta.csv + images/ + "
                      "masks/, or Original/ + Silver-standard/), or with config.data.layout="
                      "'tfds' the TFDS data dir, when config.data.source='cc359'")
  if c.data.source == "prostate" and not c.data.root and _needs_builtin(c):
    raise ConfigError("config.data.root must name the six-site prostate folder (RUNMC/, BMC/, "
                      "HCRUDB/, UCL/, BIDMC/, HK/ with Case*.nii.gz) when config.data.source="
                      "'prostate'")
  cu.check_range(c, "data.channels", 1, 15, integer=True)
  if c.data.channels % 2 == 0:
    raise ConfigError(f"config.data.channels={c.data.channels} must be odd (the slice and "
                      "as many neighbours on each side)")
  cu.check_choice(c, "data.training_slices", ("all", "organ_range"))
  cu.check_range(c, "data.val_subjects", 0, integer=True)
  cu.check_choice(c, "eval.metric", ("sdice", "dice"))
  cu.check_choice(c, "eval.postprocess", ("none", "largest_component", "d7"))
  if c.eval.postprocess == "d7" and c.data.val_subjects < 1:
    raise ConfigError("config.eval.postprocess='d7' learns its slice threshold on validation "
                      "subjects: set config.data.val_subjects >= 1")
  cu.check_choice(c, "eval.select", ("last", "best_val"))
  if c.eval.select == "best_val" and c.data.val_subjects < 1:
    raise ConfigError("config.eval.select='best_val' needs validation subjects: set "
                      "config.data.val_subjects >= 1 (paper split: 5 per site)")
  cu.check_range(c, "data.crop", 16, 1024, integer=True)
  if c.data.crop % 8:
    raise ConfigError(f"config.data.crop={c.data.crop} must be divisible by 8 (three "
                      "down-samplings of the U-Net)")
  cu.check_range(c, "data.test_subjects", 1, integer=True)
  cu.check_range(c, "data.subjects_per_domain", 2, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  if not c.data.pairs:
    raise ConfigError("config.data.pairs must list at least one (source, target) site pair")
  for pair in c.data.pairs:
    if len(pair) != 2 or pair[0] == pair[1] or pair[1] in pool_sites(pair[0]):
      raise ConfigError(f"config.data.pairs entry {pair!r} must be a source site (or a pool "
                        "'site1+site2+...') and a different target site")
    if "+" in pair[1]:
      raise ConfigError(f"config.data.pairs entry {pair!r}: the target must be one site")
  if not c.budgets:
    raise ConfigError("config.budgets must list at least one (name, subjects, slice_step)")
  for budget in c.budgets:
    if (len(budget) not in (3, 4) or not all(isinstance(b, int) for b in budget[1:])
        or budget[1] < 1 or budget[2] < 1 or (len(budget) == 4 and budget[3] < 1)):
      raise ConfigError(f"config.budgets entry {budget!r} must be (name, subjects >= 1, "
                        "slice_step >= 1) or (name, subjects, slice_step, slices >= 1)")
  cu.check_subset(c, "methods", METHODS)
  cu.check_subset(c, "optimizers", transfer_opt.OPTIMIZERS)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "model.features", 1, 512, integer=True)
  check_stage_schedules(c)
  cu.check_range(c, "batch_size", 1, integer=True)
  cu.check_range(c, "optim.sgd_momentum", 0.0, 0.999999)
  cu.check_range(c, "optim.adam_b1", 0.0, 0.999999)
  cu.check_range(c, "optim.adam_b2", 0.0, 0.999999)
  cu.check_range(c, "octl.sgd_momentum", 0.0, 0.999999)
  cu.check_range(c, "octl.adam_b1", 0.0, 0.999999)
  cu.check_range(c, "octl.adam_count", 0, integer=True)
  cu.check_choice(c, "mmtl.schedule", ("code", "paper_linear"))
  cu.check_range(c, "l2sp.alpha", 0.0)
  if not c.ftf.trainable_prefixes:
    raise ConfigError("config.ftf.trainable_prefixes must name at least one layer prefix")
  cu.check_range(c, "spottune.penalty", 0.0)
  cu.check_range(c, "spottune.temperature", 0.0, low_inclusive=False)
  cu.check_range(c, "eval.tolerance_mm", 0.0, low_inclusive=False)
  cu.validate_shared(c)
  check_stage_steps(c)


# --------------------------------------------------------------------------- data
def pool_sites(name: str) -> tuple[str, ...]:
  """The sites of a source name: 'a+b+c' pools sites a, b and c into one source (the
  prostate experiment's five-site sources); a plain name is one site."""
  return tuple(name.split("+"))


def user_site(c, site: str) -> bool:
  """Whether a site name belongs to one of the data.user sources."""
  names = {entry.partition("=")[0].strip() for entry in c.data.user}
  return any(site == u or site.startswith(f"{u}_") for u in names)


def check_stage_schedules(c: ml_collections.ConfigDict) -> None:
  """Epochs, steps, learning rate and its step decay of pre-training and fine-tuning."""
  for stage in ("pretrain", "finetune"):
    cu.check_range(c, f"{stage}.epochs", 1, integer=True)
    cu.check_range(c, f"{stage}.steps_per_epoch", 1, integer=True)
    cu.check_range(c, f"{stage}.learning_rate", 0.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.decay_epoch", 0, integer=True)
    cu.check_range(c, f"{stage}.decay_factor", 0.0, 1.0, low_inclusive=False)


def check_stage_steps(c: ml_collections.ConfigDict) -> None:
  """checkpoint_every >= 1, and steps_per_call divides each stage's steps (pre-training and
  fine-tuning run whole calls)."""
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  for stage in ("pretrain", "finetune"):
    steps = c[stage].epochs * c[stage].steps_per_epoch
    if steps % c.engine.steps_per_call:
      raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                        f"the {stage} steps ({stage}.epochs x {stage}.steps_per_epoch = {steps})")


def _needs_builtin(c) -> bool:
  # Fine-tune only: the source models come from init_from, so source sites are optional.
  sites = ([t for _, t in c.data.pairs] if c.init_from else
           [s for src, tgt in c.data.pairs for s in (*pool_sites(src), tgt)])
  return c.data.source != "none" and not all(user_site(c, s) for s in sites)


def load_domains(c, workdir: pathlib.Path) -> DomainVolumes:
  cache = files.data_cache_dir(c.data.cache_dir, workdir)
  domains, descriptions = {}, []
  if _needs_builtin(c) and c.data.source == "cc359":
    from medda_jax.data import cc359
    builtin = cc359.load_cc359(c.data.root, spacing=tuple(c.data.spacing), cache_dir=cache,
                               layout=c.data.layout)
  elif _needs_builtin(c) and c.data.source == "prostate":
    from medda_jax.data import prostate
    builtin = prostate.load_prostate(c.data.root, image_size=c.data.image_size, cache_dir=cache)
  elif _needs_builtin(c):
    from medda_jax.data import demo_skull
    builtin = demo_skull.build_demo_skull(image_size=c.data.crop,
                                          subjects_per_domain=c.data.subjects_per_domain,
                                          seed=c.data.split_seed,
                                          cache_dir=files.demo_cache_dir(c.data.cache_dir))
  else:
    builtin = DomainVolumes({})
  domains.update(builtin.domains)
  if builtin.description:
    descriptions.append(builtin.description)
  if c.data.user:
    for site, (volumes, description) in user_seg.config_sites(c, cache, domains).items():
      domains[site] = volumes
      descriptions.append(description)
  return DomainVolumes(domains, "; ".join(descriptions))


@dataclasses.dataclass(frozen=True)
class SiteSplit:
  train: list[Volume]
  test: list[Volume]
  val: list[Volume] = dataclasses.field(default_factory=list)


def split_site(volumes: list[Volume], test_subjects: int, seed: int, site: str,
               val_subjects: int = 0) -> SiteSplit:
  """Test, validation and training subjects of one site. The test subjects do not
  depend on `val_subjects` (they are drawn first), so a validation split only takes
  subjects from training."""
  if len(volumes) <= test_subjects + val_subjects:
    raise ConfigError(f"site {site} has {len(volumes)} subjects; config.data.test_subjects="
                      f"{test_subjects} and config.data.val_subjects={val_subjects} leave none "
                      "for training")
  test, val, train = split_ids(len(volumes), (test_subjects, val_subjects, -1), seed)
  return SiteSplit(*([volumes[i] for i in part] for part in (train, test, val)))


def pooled_split(splits: list[SiteSplit]) -> SiteSplit:
  """Several sites as one source: their training, test and validation subjects."""
  return SiteSplit(*([v for s in splits for v in getattr(s, part)]
                     for part in ("train", "test", "val")))


# --------------------------------------------------------------------------- experiment
class Experiment:
  """What the runs share: sites, model, compiled steps, writers."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c = c
    self.workdir = workdir
    self.domains = load_domains(c, workdir)
    known = self.domains.domains
    for src, tgt in c.data.pairs:
      for site in (*pool_sites(src), tgt):
        if site not in known and not (c.init_from and site in pool_sites(src)):
          raise ConfigError(f"site {site!r} in config.data.pairs is not in the data; "
                            f"available: {self.domains.names()}")
      if not all(s in known for s in pool_sites(src)) and "mmtl" in c.methods:
        raise ConfigError(f"config.methods has 'mmtl', which mixes batches of the source site "
                          f"{src!r}; that site is not in the data (add it to config.data."
                          "user, or drop 'mmtl')")
    sites = sorted({s for src, tgt in c.data.pairs for s in (*pool_sites(src), tgt)
                    if s in known})
    self.splits = {s: split_site(self.domains[s], c.data.test_subjects, c.data.split_seed, s,
                                 c.data.val_subjects) for s in sites}
    for src, _ in c.data.pairs:  # a pooled source: its sites' subjects together
      if "+" in src and all(s in self.splits for s in pool_sites(src)):
        self.splits[src] = pooled_split([self.splits[s] for s in pool_sites(src)])
    for _, target in c.data.pairs:
      for budget, subjects, *_ in c.budgets:
        if subjects > len(self.splits[target].train):
          raise ConfigError(f"budget {budget!r} asks for {subjects} target subjects but site "
                            f"{target} has {len(self.splits[target].train)} training subjects")
    self.inner_loop = cu.inner_loop(c)
    self.dtype = cu.compute_dtype(c)
    self.model = unet2d_res.ResUNet2D(features=c.model.features, dtype=self.dtype)
    self.twin = unet2d_res.ResUNet2D(features=c.model.features, twin=True, dtype=self.dtype)
    self.policy = unet2d_res.PolicyNet(features=c.spottune.policy_features, dtype=self.dtype)
    self.channels = c.data.channels  # adjacent slices as input channels (prostate: 3)
    self.mesh = parallel.data_mesh()
    self.writer = MetricWriter(workdir)
    self._steps: dict[tuple, Callable] = {}
    # Checkpoint folder of each source model, keyed like the models themselves by
    # (optimizer, source, pre-training seed): OCTL continues that very run's moments.
    self.pretrain_dir: dict[tuple[str, str, int], pathlib.Path] = {}
    example = jnp.zeros((1, c.data.crop, c.data.crop, self.channels))
    # jitted once: op-by-op initialisation compiles every random draw separately
    self._init_model = compile_init(lambda k: self.model.init(k, example, train=False))
    self._init_policy = compile_init(lambda k: self.policy.init(k, example))
    self._source_opt_states: dict[pathlib.Path, object] = {}
    self._predict = batch_predictor(lambda v, x: self.model.apply(v, x, train=False),
                                    c.engine.eval_batch_size, self.mesh)
    self._predict_twin = batch_predictor(self._twin_logits, c.engine.eval_batch_size, self.mesh)
    self._source_models: dict[tuple[str, str, int], TrainState] = {}

  # ---- models and losses
  def init_variables(self, seed: int):
    return self._init_model(jax.random.PRNGKey(seed))

  def plain_loss(self, params, model_state, batch, rng):
    del rng
    logits, mutated = self.model.apply({"params": params, "batch_stats": model_state},
                                       batch["images"], train=True, mutable=["batch_stats"])
    loss = optax.sigmoid_binary_cross_entropy(logits, batch["masks"]).mean()
    return loss, (mutated["batch_stats"], {})

  def spottune_loss(self, params, model_state, batch, rng):
    gates = unet2d_res.gumbel_gates(self.policy.apply({"params": params["policy"]},
                                                      batch["images"]),
                                    rng, self.c.spottune.temperature)
    logits, mutated = self.twin.apply({"params": params["unet"], "batch_stats": model_state},
                                      batch["images"], train=True, gates=gates,
                                      mutable=["batch_stats"])
    bce = optax.sigmoid_binary_cross_entropy(logits, batch["masks"]).mean()
    tuned_blocks = jnp.sum(1.0 - gates, axis=-1).mean()
    loss = bce + self.c.spottune.penalty * tuned_blocks
    return loss, (mutated["batch_stats"], {"bce": bce, "tuned_blocks": tuned_blocks})

  def _twin_logits(self, variables, x):
    gates = unet2d_res.gumbel_gates(self.policy.apply({"params": variables["policy"]}, x),
                                    None, 1.0, hard_only=True)
    return self.twin.apply({"params": variables["unet"], "batch_stats": variables["batch_stats"]},
                           x, train=False, gates=gates)

  # ---- optimizers
  def optimizer(self, opt: str, stage: str, *, continuation: bool = False,
                l2sp_alpha: float = 0.0, trainable=None) -> optax.GradientTransformation:
    """The run's optimizer: the stage's schedule, restarted; OCTL's decay rates when
    `continuation`, else the pre-training ones (spec §2.6)."""
    s, c = self.c[stage], self.c
    rates = c.octl if continuation else c.optim
    return transfer_opt.transfer_optimizer(
        opt, learning_rate=s.learning_rate, decay_step=s.decay_epoch * s.steps_per_epoch,
        decay_factor=s.decay_factor, momentum=rates.sgd_momentum,
        nesterov=c.optim.sgd_nesterov and not continuation, b1=rates.adam_b1,
        b2=c.optim.adam_b2, eps=c.optim.adam_eps, l2sp_alpha=l2sp_alpha, trainable=trainable)

  def step_fn(self, opt: str, continuation: bool, twin: bool, tx):
    """One compiled chunk per (optimizer, Nesterov or not, network): every method, seed
    and budget with the same update code reuses it (`transfer_optimizer` keeps all
    numbers in its state)."""
    nesterov = opt == "sgd" and self.c.optim.sgd_nesterov and not continuation
    key = (opt, nesterov, twin)
    if key not in self._steps:
      loss_fn = self.spottune_loss if twin else self.plain_loss
      self._steps[key] = build_train_chunk(loss_fn, tx, self.inner_loop, mesh=self.mesh)
    return self._steps[key]

  # ---- training
  def training_pool(self, volumes: list[Volume], slice_step: int = 1) -> mixed.SlicePool:
    """The slices training draws from: all (CC359), or with data.training_slices=
    'organ_range' the organ's z-range plus each other slice with probability 0.1
    (prostate, reference code), drawn once per volume from data.split_seed."""
    if self.c.data.training_slices == "all":
      return mixed.SlicePool.of(volumes, slice_step)
    from medda_jax.data.prostate import prostate_training_slices
    slices = tuple(prostate_training_slices(v, np.random.default_rng(
        [self.c.data.split_seed, i]))[::slice_step] for i, v in enumerate(volumes))
    return mixed.SlicePool(tuple(volumes), slices)

  def batches(self, source, target, stage: str, schedule: str, seed: int):
    s = self.c[stage]
    cfg = mixed.MixedBatchConfig(batch_size=self.c.batch_size, steps_per_epoch=s.steps_per_epoch,
                                 num_epochs=s.epochs, schedule=schedule, crop=self.c.data.crop,
                                 channels=self.channels, seed=seed)
    spc = self.c.engine.steps_per_call
    ds = mixed.mixed_batches(source, target, cfg, spc, jax.process_index(), jax.process_count())
    calls = cfg.total_steps // spc
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    return it, calls

  def train(self, name: str, ckpt_dir, state, step, it, calls, show_progress, hook=None):
    """`hook` (a `KeepBest`): the loop's state is (train state, best variables) and the
    result's state that pair."""
    # Replicated on the mesh from the start: the step's outputs are, and a state that
    # changed placement after the first call would be traced and compiled twice.
    state = parallel.replicate(state, self.mesh)
    if hook is not None:
      state, chunk = (state, jax.device_get(state_variables(state))), step
      step = lambda s, batch: (lambda t, m: ((t, s[1]), m))(*chunk(s[0], batch))  # noqa: E731
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    try:
      result = run_loop(
          name, state, step, it, total_calls=calls, steps_per_call=self.c.engine.steps_per_call,
          checkpointer=ckpt, writer=self.writer, checkpoint_every=self.c.engine.checkpoint_every,
          prepare=lambda b: parallel.global_batch({"images": b["images"], "masks": b["masks"]},
                                                  self.mesh, "data", batch_dim=1),
          show_progress=show_progress, hook=hook)
    finally:
      if ckpt is not None:
        ckpt.close()
    return result

  def keep_best_on_validation(self, site: str, twin: bool) -> KeepBest | None:
    """With eval.select='best_val': a hook scoring the model on the site's validation
    subjects (eval.metric) after every epoch and keeping the best (spec D6)."""
    if self.c.eval.select != "best_val":
      return None
    s = self.c.finetune
    every = max(1, s.steps_per_epoch // self.c.engine.steps_per_call)
    val = self.splits[site].val
    return KeepBest(lambda v: self.evaluate(eval_variables(v, twin), val, twin, site)[
        self.c.eval.metric], every)

  def pretrain(self, opt: str, site: str, seed: int) -> TrainState:
    """The source model (trained, or restored from its finished checkpoint), once per
    (optimizer, site, seed) in this process."""
    if (opt, site, seed) not in self._source_models:
      self._source_models[(opt, site, seed)] = self._pretrain(opt, site, seed)
    return self._source_models[(opt, site, seed)]

  def _pretrain(self, opt: str, site: str, seed: int) -> TrainState:
    variables = self.init_variables(seed)
    tx = self.optimizer(opt, "pretrain")
    state = TrainState.create(variables["params"], tx, variables["batch_stats"],
                              jax.random.PRNGKey(seed))
    name = f"pretrain_{opt}_{site}_seed{seed}"
    if self.c.init_from:
      return self.restore_source_model(name, opt, site, seed, state)
    step = self.step_fn(opt, False, False, tx)
    source = self.training_pool(self.splits[site].train)
    it, calls = self.batches(source, None, "pretrain", "source_only", seed)
    self.pretrain_dir[(opt, site, seed)] = self.workdir / "checkpoints" / name
    return self.train(name, self.pretrain_dir[(opt, site, seed)], state, step, it, calls,
                      True).state

  def restore_source_model(self, name: str, opt: str, site: str, seed: int, like: TrainState):
    """Fine-tune only: the source model `name` of the run in config.init_from (its
    workdir, or that one checkpoint folder)."""
    root = pathlib.Path(self.c.init_from).expanduser()
    candidates = [root / "checkpoints" / name, root / name, root]
    directory = next((d for d in candidates if d.is_dir() and any(
        p.name.isdigit() for p in d.iterdir())), None)
    if directory is None:
      raise DataError(f"config.init_from={self.c.init_from!r} holds no checkpoint {name} (the "
                      f"source model of optimizer {opt}, site {site}; expected "
                      f"checkpoints/{name}/<step>/ in the workdir of an earlier run)")
    hint = " (config.model.features differs from the run that saved it?)"
    step = check_params(directory, like.params, hint=hint)
    ckpt = Checkpointer(directory)
    try:
      state, _ = ckpt.restore(like, step)
    except Exception as e:  # noqa: BLE001 - orbax reports a foreign tree in many ways
      raise DataError(f"{directory} step {step} is not a source model of optimizer {opt}: "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    finally:
      ckpt.close()
    self.pretrain_dir[(opt, site, seed)] = directory
    return state

  def finetune(self, method: str, opt: str, source_state: TrainState, source_site: str,
               target_pool: mixed.SlicePool, seed: int, run_name: str,
               pretrain_seed: int | None = None, target_site: str = ""):
    """`source_state` is the source model `pretrain(opt, source_site, pretrain_seed)`
    (default: `seed`); `target_site` names the validation subjects of eval.select=
    'best_val'. Returns (variables to evaluate, loss curve, checkpoint directory or None); the
    variables are {"params", "batch_stats"}, or for SpotTune {"unet", "policy",
    "batch_stats"} as `evaluate(..., twin=True)` takes them."""
    c = self.c
    # Copies: the training step donates its state, and the source model serves every run.
    params, batch_stats = jax.tree.map(jnp.array, (source_state.params, source_state.model_state))
    rng = jax.random.PRNGKey(seed + 1000)
    source_pool, schedule = None, "target_only"
    alpha, trainable, continuation, twin = 0.0, None, False, False
    if method == "mmtl":
      source_pool = self.training_pool(self.splits[source_site].train)
      schedule = c.mmtl.schedule
    elif method == "octl":
      continuation = True
    elif method == "ftf":
      trainable = transfer_opt.trainable_mask(
          params, transfer_opt.first_layers(c.ftf.trainable_prefixes))
    elif method == "l2sp":
      alpha = c.l2sp.alpha
    elif method == "spottune":
      twin = True
      variables = unet2d_res.twin_variables({"params": params, "batch_stats": batch_stats})
      policy = self._init_policy(jax.random.PRNGKey(seed + 2000))
      params = {"unet": variables["params"], "policy": policy["params"]}
      batch_stats = variables["batch_stats"]
      trainable = transfer_opt.trainable_mask(
          params, lambda path: not unet2d_res.is_frozen_path(path))
    elif method != "fta":
      raise ConfigError(f"unknown transfer method {method!r}")
    tx = self.optimizer(opt, "finetune", continuation=continuation, l2sp_alpha=alpha,
                        trainable=trainable)
    step = self.step_fn(opt, continuation, twin, tx)
    if continuation:
      # OCTL: the moments at the end of pre-training, read back from the source run's
      # checkpoint by an orbax partial restore of its optimizer state.
      pre_seed = seed if pretrain_seed is None else pretrain_seed
      tx = transfer_opt.continue_from(
          tx, self.source_opt_state(opt, source_site, pre_seed, source_state),
          adam_count=c.octl.adam_count)
    state = TrainState.create(params, tx, batch_stats, rng)
    it, calls = self.batches(source_pool, target_pool, "finetune", schedule, seed)
    # Runs shorter than one checkpoint interval are not checkpointed: a killed run redoes
    # at most that one run (finished runs are kept in the results file).
    ckpt_dir = (self.workdir / "checkpoints" / "runs" / run_name.replace("/", "_")
                if calls > c.engine.checkpoint_every else None)
    hook = self.keep_best_on_validation(target_site, twin) if target_site else None
    result = self.train(run_name, ckpt_dir, state, step, it, calls, False, hook)
    if hook is not None:  # the best-on-validation variables (spec D6)
      return eval_variables(jax.device_get(result.state[1]), twin), result.curve, ckpt_dir
    out = eval_variables(state_variables(result.state), twin)
    return out, result.curve, ckpt_dir

  def source_opt_state(self, opt: str, site: str, seed: int, like: TrainState):
    """The optimizer state at the end of the pre-training run (opt, site, seed)."""
    directory = self.pretrain_dir[(opt, site, seed)]
    if directory not in self._source_opt_states:  # read once per source model
      ckpt = Checkpointer(directory)
      try:
        self._source_opt_states[directory] = ckpt.restore_field("opt_state", like.opt_state)
      finally:
        ckpt.close()
    return self._source_opt_states[directory]

  # ---- evaluation
  def predict_volume(self, variables, volume: Volume, twin: bool) -> np.ndarray:
    """Slice-wise sigmoid > 0.5 of a whole volume, padded in-plane to a multiple of 8
    with the volume minimum; each slice sees data.channels adjacent slices (clamped at
    the ends, as in training)."""
    s, h, w = volume.image.shape
    ph, pw = (-h) % 8, (-w) % 8
    image = np.pad(volume.image, ((0, 0), (0, ph), (0, pw)), constant_values=volume.image.min())
    half = self.channels // 2
    rows = np.clip(np.arange(s)[:, None] + np.arange(-half, half + 1), 0, s - 1)
    stacks = np.moveaxis(image[rows], 1, -1)  # [S, H, W, channels]
    predict = self._predict_twin if twin else self._predict
    logits = predict(variables, stacks.astype(np.float32))[:, :h, :w, 0]
    return logits > 0.0

  def evaluate_source(self, variables, site: str, twin: bool = False,
                      val_site: str = "") -> dict[str, float] | None:
    """Source retention, or None when the source site is not in the data (fine-tune only)."""
    if site not in self.splits:
      return None
    return self.evaluate(variables, self.splits[site].test, twin, val_site)

  def slice_threshold(self, variables, site: str, twin: bool = False) -> float:
    """Spec D7 step 1: the model's slice-size threshold from its predictions on the
    site's validation subjects (largest 2-D component per slice, on slices without and
    with the organ; `metrics.d7_threshold`)."""
    without, with_organ = [], []
    for v in self.splits[site].val:
      sizes = metrics_lib.largest_slice_component_sizes(self.predict_volume(variables, v, twin))
      organ = v.mask.any(axis=(1, 2))
      without.append(sizes[~organ])
      with_organ.append(sizes[organ])
    return metrics_lib.d7_threshold(np.concatenate(without), np.concatenate(with_organ))

  def evaluate(self, variables, volumes: list[Volume], twin: bool = False,
               val_site: str = "") -> dict[str, float]:
    """Mean over volumes of surface Dice and Dice (x100), after eval.postprocess; with
    post-processing also the Dice without it ('dice_raw', spec pitfall 7). 'd7' learns
    its slice threshold on `val_site`'s validation subjects."""
    scores: dict[str, list[float]] = {"sdice": [], "dice": []}
    post = self.c.eval.postprocess
    threshold = self.slice_threshold(variables, val_site, twin) if post == "d7" else 0.0
    for v in volumes:
      pred = self.predict_volume(variables, v, twin)
      gt = v.mask.astype(bool)
      if post != "none":
        scores.setdefault("dice_raw", []).append(metrics_lib.dice_3d(pred, gt))
        pred = metrics_lib.largest_component_postprocess(pred, threshold)
      scores["sdice"].append(metrics_lib.surface_dice(pred, gt, v.spacing,
                                                      self.c.eval.tolerance_mm))
      scores["dice"].append(metrics_lib.dice_3d(pred, gt))
    return {k: float(np.mean(v) * 100) for k, v in scores.items()}


def eval_variables(flat: dict, twin: bool) -> dict:
  """{"params", **batch_stats} of a train state (`engine.trainer.variables`) as `evaluate`
  takes them: {"params", "batch_stats"}, or for SpotTune {"unet", "policy", "batch_stats"}."""
  stats = {k: v for k, v in flat.items() if k != "params"}
  if twin:
    return {"unet": flat["params"]["unet"], "policy": flat["params"]["policy"],
            "batch_stats": stats}
  return {"params": flat["params"], "batch_stats": stats}


def target_budget_pool(split: SiteSplit, subjects: int, slice_step: int, seed: int,
                       site: str, slices: int = 0, exp: Experiment | None = None,
                       budget: str = "") -> mixed.SlicePool:
  """The seed's draw of `subjects` training subjects of the target site, every
  `slice_step`-th slice (of `exp.training_pool`'s slices when given); with `slices` > 0,
  the seed's draw of that many of those slices (prostate: 10, 20, 40 slices)."""
  if subjects > len(split.train):
    raise ConfigError(f"a budget asks for {subjects} target subjects but site {site} has "
                      f"{len(split.train)} training subjects")
  chosen = np.random.default_rng([seed, 7]).permutation(len(split.train))[:subjects]
  volumes = [split.train[i] for i in sorted(chosen)]
  pool = (exp.training_pool(volumes, slice_step) if exp is not None else
          mixed.SlicePool.of(volumes, slice_step))
  if not slices:
    return pool
  if slices > len(pool):
    raise ConfigError(f"budget {budget!r} asks for {slices} target slices but its {subjects} "
                      f"subject(s) of site {site} have {len(pool)} training slices; raise "
                      "its subjects in config.budgets")
  flat = [(v, int(s)) for v, ss in enumerate(pool.slices) for s in ss]
  keep = sorted(np.random.default_rng([seed, 8]).choice(len(flat), slices, replace=False))
  per_volume = [np.array([flat[k][1] for k in keep if flat[k][0] == v], np.int64)
                for v in range(len(pool.volumes))]
  used = [v for v in range(len(pool.volumes)) if per_volume[v].size]
  return mixed.SlicePool(tuple(pool.volumes[v] for v in used),
                         tuple(per_volume[v] for v in used))


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  if config.get("task", "segmentation") == "classification":  # chest X-rays
    from medda_jax.methods.gradient_transfer import classification
    return classification.train_and_evaluate(config, workdir)
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  used = {s for src, tgt in c.data.pairs for s in (*pool_sites(src), tgt) if s in exp.splits}
  user_sites = sorted(s for s in used if user_site(c, s))
  demo = c.data.source == "demo_skull" and len(user_sites) < len(used)
  if parallel.is_main_process():
    print(f"data: {exp.domains.description}\npairs {list(map(tuple, c.data.pairs))}; "
          f"budgets {[b[0] for b in c.budgets]}; methods {list(c.methods)}; optimizers "
          f"{list(c.optimizers)}; seeds {list(c.seeds)}; inner loop: {exp.inner_loop}",
          file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  results, record = runs.runs, runs.record

  runs_per_model = len(c.budgets) * len(c.methods)
  for opt in c.optimizers:
    for src, tgt in c.data.pairs:
      for seed in c.seeds:
        pre_seed = seed if c.pretrain_per_seed else c.seeds[0]
        source_state = exp.pretrain(opt, src, pre_seed)
        source_vars = {"params": source_state.params, "batch_stats": source_state.model_state}
        key = f"{opt}/{src}->{tgt}/source_model/{seed}"
        if key not in results:  # lower bound: the source model, not adapted
          record(key, {"target": exp.evaluate(source_vars, exp.splits[tgt].test, False, tgt),
                       "source": exp.evaluate_source(source_vars, src, False, tgt)})
        key = upper_key(opt, tgt, seed)
        if c.upper_bound and key not in results:
          # Upper bound: trained on all of the target's training subjects, as a source
          # model is (free when the target is also a source of the run, as on CC359).
          upper = exp.pretrain(opt, tgt, pre_seed)
          record(key, {"target": exp.evaluate({"params": upper.params,
                                               "batch_stats": upper.model_state},
                                              exp.splits[tgt].test, False, tgt),
                       "source": None})
        with Progress(f"fine-tuning {opt} {src}->{tgt} seed {seed}", runs_per_model) as progress:
          for budget, subjects, slice_step, *slices in c.budgets:
            pool = target_budget_pool(exp.splits[tgt], subjects, slice_step, seed, tgt,
                                      slices[0] if slices else 0, exp, budget)
            for method in c.methods:
              key = run_key(opt, src, tgt, budget, method, seed)
              if key not in results:
                adapted, curve, ckpt_dir = exp.finetune(method, opt, source_state, src, pool,
                                                        seed, key, pretrain_seed=pre_seed,
                                                        target_site=tgt)
                twin = method == "spottune"
                record(key, {"target": exp.evaluate(adapted, exp.splits[tgt].test, twin, tgt),
                             "source": exp.evaluate_source(adapted, src, twin, tgt),
                             "target_slices": len(pool), "final_loss": curve[-1]})
                if ckpt_dir is not None:
                  shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
              progress.update(1, **{c.eval.metric: results[key]["target"][c.eval.metric]})

  table = summarise(results, c)
  parts = []
  if demo:
    parts.append("DEMO DATA (one real head MRI, synthetic subjects and scanner sites) — not a "
                 "reproduction of the paper's numbers")
  elif len(user_sites) < len(used):
    parts.append("six-site prostate MRI" if c.data.source == "prostate" else "CC359")
  if user_sites:
    parts.append(f"your sites: {', '.join(user_sites)}")
  if c.init_from:
    parts.append(f"source models from {c.init_from}")
  label = "; ".join(parts)
  final, metric = {}, c.eval.metric
  for opt, rows in table.items():
    for budget, row in rows.items():
      for col, cell in row.items():
        final[f"target_{metric}/{opt}/{budget}/{col}"] = cell["target"][0]
        if np.isfinite(cell["source"][0]):  # n/a without the source site (fine-tune only)
          final[f"source_{metric}/{opt}/{budget}/{col}"] = cell["source"][0]
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "pairs": [list(p) for p in c.data.pairs],
         "seeds": list(c.seeds), "budgets": [list(b) for b in c.budgets],
         "tolerance_mm": c.eval.tolerance_mm, "metric": metric,
         "postprocess": c.eval.postprocess, "select": c.eval.select, "table": table}, indent=1))
    plots.transfer_figure(workdir / "transfer.png", table, [b[0] for b in c.budgets],
                          columns(c), title=f"{METRIC_NAMES[metric]} after adaptation"
                          + (" (demo data)" if demo else ""),
                          ylabel=f"{METRIC_NAMES[metric]} x100")
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
