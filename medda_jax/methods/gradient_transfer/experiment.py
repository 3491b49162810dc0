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
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.gradient_transfer.report import run_key, summarise, tables_markdown
from medda_jax.models import unet2d_res
from medda_jax.optim import transfer as transfer_opt


METHODS = ("fta", "ftf", "l2sp", "spottune", "octl", "mmtl")
RESULTS_FILE = "transfer_results.json"


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", ("demo_skull", "cc359", "none"))
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  if c.init_from and not pathlib.Path(c.init_from).expanduser().exists():
    raise ConfigError(f"config.init_from={c.init_from!r} does not exist (expected the workdir "
                      "of an earlier run, or one of its pre-training checkpoint folders)")
  user_seg.check_site_fields(c)
  if c.data.source == "cc359" and not c.data.root and _needs_builtin(c):
    raise ConfigError("config.data.root must name the CC359 folder (meta.csv + images/ + "
                      "masks/, or Original/ + Silver-standard/), or with config.data.layout="
                      "'tfds' the TFDS data dir, when config.data.source='cc359'")
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
    if len(pair) != 2 or pair[0] == pair[1]:
      raise ConfigError(f"config.data.pairs entry {pair!r} must be two different site names")
  if not c.budgets:
    raise ConfigError("config.budgets must list at least one (name, subjects, slice_step)")
  for budget in c.budgets:
    if (len(budget) != 3 or not isinstance(budget[1], int) or not isinstance(budget[2], int)
        or budget[1] < 1 or budget[2] < 1):
      raise ConfigError(f"config.budgets entry {budget!r} must be (name, subjects >= 1, "
                        "slice_step >= 1)")
  cu.check_subset(c, "methods", METHODS)
  cu.check_subset(c, "optimizers", transfer_opt.OPTIMIZERS)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "model.features", 1, 512, integer=True)
  for stage in ("pretrain", "finetune"):
    cu.check_range(c, f"{stage}.epochs", 1, integer=True)
    cu.check_range(c, f"{stage}.steps_per_epoch", 1, integer=True)
    cu.check_range(c, f"{stage}.learning_rate", 0.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.decay_epoch", 0, integer=True)
    cu.check_range(c, f"{stage}.decay_factor", 0.0, 1.0, low_inclusive=False)
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
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  for stage in ("pretrain", "finetune"):
    steps = c[stage].epochs * c[stage].steps_per_epoch
    if steps % c.engine.steps_per_call:
      raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                        f"the {stage} steps ({stage}.epochs x {stage}.steps_per_epoch = {steps})")


# --------------------------------------------------------------------------- data
def user_site(c, site: str) -> bool:
  """Whether a site name belongs to one of the data.user sources."""
  names = {entry.partition("=")[0].strip() for entry in c.data.user}
  return any(site == u or site.startswith(f"{u}_") for u in names)


def _needs_builtin(c) -> bool:
  # Fine-tune only: the source models come from init_from, so source sites are optional.
  sites = [t for _, t in c.data.pairs] if c.init_from else [s for p in c.data.pairs for s in p]
  return c.data.source != "none" and not all(user_site(c, s) for s in sites)


def load_domains(c, workdir: pathlib.Path) -> DomainVolumes:
  cache = pathlib.Path(c.data.cache_dir) if c.data.cache_dir else workdir / "cache"
  domains, descriptions = {}, []
  if _needs_builtin(c) and c.data.source == "cc359":
    from medda_jax.data import cc359
    builtin = cc359.load_cc359(c.data.root, spacing=tuple(c.data.spacing), cache_dir=cache,
                               layout=c.data.layout)
  elif _needs_builtin(c):
    from medda_jax.data import demo_skull
    builtin = demo_skull.build_demo_skull(image_size=c.data.crop,
                                          subjects_per_domain=c.data.subjects_per_domain,
                                          seed=c.data.split_seed, cache_dir=cache)
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


def split_site(volumes: list[Volume], test_subjects: int, seed: int, site: str) -> SiteSplit:
  if len(volumes) <= test_subjects:
    raise ConfigError(f"site {site} has {len(volumes)} subjects; config.data.test_subjects="
                      f"{test_subjects} leaves none for training")
  test, train = split_ids(len(volumes), (test_subjects, -1), seed)
  return SiteSplit([volumes[i] for i in train], [volumes[i] for i in test])


# --------------------------------------------------------------------------- experiment
class Experiment:
  """What the runs share: sites, model, compiled steps, writers."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c = c
    self.workdir = workdir
    self.domains = load_domains(c, workdir)
    for pair in c.data.pairs:
      for site in pair:
        if site not in self.domains.domains and not (c.init_from and site == pair[0]):
          raise ConfigError(f"site {site!r} in config.data.pairs is not in the data; "
                            f"available: {self.domains.names()}")
      if pair[0] not in self.domains.domains and "mmtl" in c.methods:
        raise ConfigError(f"config.methods has 'mmtl', which mixes batches of the source site "
                          f"{pair[0]!r}; that site is not in the data (add it to config.data."
                          "user, or drop 'mmtl')")
    sites = sorted({s for pair in c.data.pairs for s in pair if s in self.domains.domains})
    self.splits = {s: split_site(self.domains[s], c.data.test_subjects, c.data.split_seed, s)
                   for s in sites}
    for _, target in c.data.pairs:
      for budget, subjects, _ in c.budgets:
        if subjects > len(self.splits[target].train):
          raise ConfigError(f"budget {budget!r} asks for {subjects} target subjects but site "
                            f"{target} has {len(self.splits[target].train)} training subjects")
    self.inner_loop = cu.inner_loop(c)
    self.dtype = cu.compute_dtype(c)
    self.model = unet2d_res.ResUNet2D(features=c.model.features, dtype=self.dtype)
    self.twin = unet2d_res.ResUNet2D(features=c.model.features, twin=True, dtype=self.dtype)
    self.policy = unet2d_res.PolicyNet(features=c.spottune.policy_features, dtype=self.dtype)
    self.channels = 1
    self.mesh = parallel.data_mesh()
    self.writer = MetricWriter(workdir)
    self._steps: dict[tuple, Callable] = {}
    self.pretrain_dir: dict[tuple[str, str], pathlib.Path] = {}  # latest per (optimizer, site)
    example = jnp.zeros((1, c.data.crop, c.data.crop, self.channels))
    # jitted once: op-by-op initialisation compiles every random draw separately
    self._init_model = jax.jit(lambda k: self.model.init(k, example, train=False))
    self._init_policy = jax.jit(lambda k: self.policy.init(k, example))
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

  def train(self, name: str, ckpt_dir, state, step, it, calls, show_progress):
    # Replicated on the mesh from the start: the step's outputs are, and a state that
    # changed placement after the first call would be traced and compiled twice.
    state = parallel.replicate(state, self.mesh)
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    try:
      result = run_loop(
          name, state, step, it, total_calls=calls, steps_per_call=self.c.engine.steps_per_call,
          checkpointer=ckpt, writer=self.writer, checkpoint_every=self.c.engine.checkpoint_every,
          prepare=lambda b: parallel.global_batch({"images": b["images"], "masks": b["masks"]},
                                                  self.mesh, "data", batch_dim=1),
          show_progress=show_progress)
    finally:
      if ckpt is not None:
        ckpt.close()
    return result

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
      return self.restore_source_model(name, opt, site, state)
    step = self.step_fn(opt, False, False, tx)
    source = mixed.SlicePool.of(self.splits[site].train)
    it, calls = self.batches(source, None, "pretrain", "source_only", seed)
    self.pretrain_dir[(opt, site)] = self.workdir / "checkpoints" / name
    return self.train(name, self.pretrain_dir[(opt, site)], state, step, it, calls, True).state

  def restore_source_model(self, name: str, opt: str, site: str, like: TrainState):
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
    self.pretrain_dir[(opt, site)] = directory
    return state

  def finetune(self, method: str, opt: str, source_state: TrainState, source_site: str,
               target_pool: mixed.SlicePool, seed: int, run_name: str):
    """Returns (variables to evaluate, loss curve, checkpoint directory or None); the
    variables are {"params", "batch_stats"}, or for SpotTune {"unet", "policy",
    "batch_stats"} as `evaluate(..., twin=True)` takes them."""
    c = self.c
    # Copies: the training step donates its state, and the source model serves every run.
    params, batch_stats = jax.tree.map(jnp.array, (source_state.params, source_state.model_state))
    rng = jax.random.PRNGKey(seed + 1000)
    source_pool, schedule = None, "target_only"
    alpha, trainable, continuation, twin = 0.0, None, False, False
    if method == "mmtl":
      source_pool = mixed.SlicePool.of(self.splits[source_site].train)
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
      tx = transfer_opt.continue_from(tx, self.source_opt_state(opt, source_site, source_state),
                                      adam_count=c.octl.adam_count)
    state = TrainState.create(params, tx, batch_stats, rng)
    it, calls = self.batches(source_pool, target_pool, "finetune", schedule, seed)
    # Runs shorter than one checkpoint interval are not checkpointed: a killed run redoes
    # at most that one run (finished runs are kept in the results file).
    ckpt_dir = (self.workdir / "checkpoints" / "runs" / run_name.replace("/", "_")
                if calls > c.engine.checkpoint_every else None)
    result = self.train(run_name, ckpt_dir, state, step, it, calls, False)
    trained, model_state = result.state.params, result.state.model_state
    if twin:
      out = {"unet": trained["unet"], "policy": trained["policy"], "batch_stats": model_state}
    else:
      out = {"params": trained, "batch_stats": model_state}
    return out, result.curve, ckpt_dir

  def source_opt_state(self, opt: str, site: str, like: TrainState):
    directory = self.pretrain_dir[(opt, site)]
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
    with the volume minimum."""
    s, h, w = volume.image.shape
    ph, pw = (-h) % 8, (-w) % 8
    image = np.pad(volume.image, ((0, 0), (0, ph), (0, pw)), constant_values=volume.image.min())
    predict = self._predict_twin if twin else self._predict
    logits = predict(variables, image[..., None].astype(np.float32))[:, :h, :w, 0]
    return logits > 0.0

  def evaluate_source(self, variables, site: str, twin: bool = False) -> dict[str, float] | None:
    """Source retention, or None when the source site is not in the data (fine-tune only)."""
    if site not in self.splits:
      return None
    return self.evaluate(variables, self.splits[site].test, twin)

  def evaluate(self, variables, volumes: list[Volume], twin: bool = False) -> dict[str, float]:
    sdice, dice = [], []
    for v in volumes:
      pred = self.predict_volume(variables, v, twin)
      gt = v.mask.astype(bool)
      sdice.append(metrics_lib.surface_dice(pred, gt, v.spacing, self.c.eval.tolerance_mm))
      dice.append(metrics_lib.dice_3d(pred, gt))
    return {"sdice": float(np.mean(sdice) * 100), "dice": float(np.mean(dice) * 100)}


def target_budget_pool(split: SiteSplit, subjects: int, slice_step: int, seed: int,
                       site: str) -> mixed.SlicePool:
  """The seed's draw of `subjects` training subjects of the target site, every
  `slice_step`-th slice."""
  if subjects > len(split.train):
    raise ConfigError(f"a budget asks for {subjects} target subjects but site {site} has "
                      f"{len(split.train)} training subjects")
  chosen = np.random.default_rng([seed, 7]).permutation(len(split.train))[:subjects]
  return mixed.SlicePool.of([split.train[i] for i in sorted(chosen)], slice_step)


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  used = {s for pair in c.data.pairs for s in pair if s in exp.splits}
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
        if key not in results:
          record(key, {"target": exp.evaluate(source_vars, exp.splits[tgt].test),
                       "source": exp.evaluate_source(source_vars, src)})
        with Progress(f"fine-tuning {opt} {src}->{tgt} seed {seed}", runs_per_model) as progress:
          for budget, subjects, slice_step in c.budgets:
            pool = target_budget_pool(exp.splits[tgt], subjects, slice_step, seed, tgt)
            for method in c.methods:
              key = run_key(opt, src, tgt, budget, method, seed)
              if key not in results:
                variables, curve, ckpt_dir = exp.finetune(method, opt, source_state, src, pool,
                                                          seed, key)
                twin = method == "spottune"
                record(key, {"target": exp.evaluate(variables, exp.splits[tgt].test, twin),
                             "source": exp.evaluate_source(variables, src, twin),
                             "target_slices": len(pool), "final_loss": curve[-1]})
                if ckpt_dir is not None:
                  shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
              progress.update(1, sdice=results[key]["target"]["sdice"])

  table = summarise(results, c)
  parts = []
  if demo:
    parts.append("DEMO DATA (one real head MRI, synthetic subjects and scanner sites) — not a "
                 "reproduction of the paper's numbers")
  elif len(user_sites) < len(used):
    parts.append("CC359")
  if user_sites:
    parts.append(f"your sites: {', '.join(user_sites)}")
  if c.init_from:
    parts.append(f"source models from {c.init_from}")
  label = "; ".join(parts)
  final = {}
  for opt, rows in table.items():
    for budget, row in rows.items():
      for col, cell in row.items():
        final[f"target_sdice/{opt}/{budget}/{col}"] = cell["target"][0]
        if np.isfinite(cell["source"][0]):  # n/a without the source site (fine-tune only)
          final[f"source_sdice/{opt}/{budget}/{col}"] = cell["source"][0]
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "pairs": [list(p) for p in c.data.pairs],
         "seeds": list(c.seeds), "budgets": [list(b) for b in c.budgets],
         "tolerance_mm": c.eval.tolerance_mm, "table": table}, indent=1))
    plots.transfer_figure(workdir / "transfer.png", table, [b[0] for b in c.budgets],
                          ["none"] + list(c.methods),
                          title="surface Dice after adaptation" + (" (demo data)" if demo else ""))
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
