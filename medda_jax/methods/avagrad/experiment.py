"""The AvaGrad short-schedule study: config checks, data, one training run per (optimiser-budget
column, seed) on the source site, evaluation per 3-D volume on the source test set and
every unseen site, and the driver (see the package's docstring).
"""

from __future__ import annotations

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
from medda_jax import files, parallel
from medda_jax import metrics as metrics_lib
from medda_jax.data import mixed, prepared, user_seg
from medda_jax.data.volumes import DomainVolumes, Volume, split_ids
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods.avagrad import augment, figures, paper, report
from medda_jax.models import nnunet2d

RESULTS_FILE = "avagrad_runs.json"
SOURCES = ("cc359", "mnms", "demo_skull", "none")
CLASS_NAMES = {"cc359": ("brain",), "demo_skull": ("brain",), "mnms": ("LV", "MYO", "RV"),
               "none": ("foreground",)}


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", SOURCES)
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  user_seg.check_site_fields(c)
  if c.data.source in ("cc359", "mnms") and not c.data.root and not _user_site(c, c.data.train_site):
    what = ("the CC359 folder (meta.csv + images/ + masks/, or Original/ + Silver-standard/)"
            if c.data.source == "cc359" else
            "the M&Ms folder (Training/Labeled/<code>/ and the dataset information CSV)")
    raise ConfigError(f"config.data.root must name {what} when config.data.source="
                      f"{c.data.source!r}")
  if (c.data.source in ("cc359", "mnms") and c.data.root
      and not pathlib.Path(c.data.root).expanduser().is_dir()):
    raise ConfigError(f"config.data.root={c.data.root!r} does not exist (expected the "
                      f"{'CC359' if c.data.source == 'cc359' else 'M&Ms'} folder)")
  if not c.data.train_site:
    raise ConfigError("config.data.train_site must name the source site (e.g. 'ge_3')")
  cu.check_range(c, "model.stages", 2, 9, integer=True)
  cu.check_range(c, "model.base", 1, 512, integer=True)
  cu.check_range(c, "model.cap", 1, 1024, integer=True)
  cu.check_range(c, "data.patch", 8, 2048, integer=True)
  if c.data.patch % 2 ** (c.model.stages - 1):
    raise ConfigError(f"config.data.patch={c.data.patch} must be divisible by "
                      f"2^(model.stages - 1) = {2 ** (c.model.stages - 1)}")
  cu.check_range(c, "data.test_subjects", 1, integer=True)
  cu.check_range(c, "data.subjects_per_domain", 2, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "data.max_target_volumes", 0, integer=True)
  if not c.runs:
    raise ConfigError("config.runs must list at least one (column name, optimizer, epochs)")
  names = set()
  for run in c.runs:
    if len(run) != 3 or not isinstance(run[0], str) or not isinstance(run[2], int) or run[2] < 1:
      raise ConfigError(f"config.runs entry {run!r} must be (column name, optimizer, epochs "
                        ">= 1), e.g. ('AG-50', 'avagrad', 50)")
    if run[1] not in paper.OPTIMIZERS:
      raise ConfigError(f"config.runs entry {run!r} names unknown optimizer {run[1]!r}; "
                        f"known: {', '.join(paper.OPTIMIZERS)}")
    if run[0] in names:
      raise ConfigError(f"config.runs has the column name {run[0]!r} twice")
    names.add(run[0])
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "train.steps_per_epoch", 1, integer=True)
  cu.check_range(c, "train.batch_size", 1, integer=True)
  cu.check_choice(c, "train.schedule", paper.SCHEDULES)
  for opt in paper.OPTIMIZERS:
    cu.check_range(c, f"optim.{opt}.learning_rate", 0.0, low_inclusive=False)
    cu.check_range(c, f"optim.{opt}.weight_decay", 0.0)
  cu.check_range(c, "optim.sgd.momentum", 0.0, 0.999999)
  for opt in ("adam", "avagrad"):
    cu.check_range(c, f"optim.{opt}.b1", 0.0, 0.999999)
    cu.check_range(c, f"optim.{opt}.b2", 0.0, 0.999999)
    cu.check_range(c, f"optim.{opt}.eps", 0.0, low_inclusive=False)
  cu.check_choice(c, "optim.avagrad.normalizer", ("reference", "paper"))
  cu.check_choice(c, "eval.metric", ("sdice", "dice"))
  cu.check_range(c, "eval.tolerance_mm", 0.0, low_inclusive=False)
  cu.validate_shared(c)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  if c.train.steps_per_epoch % c.engine.steps_per_call:
    raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                      f"config.train.steps_per_epoch={c.train.steps_per_epoch} (update sizes "
                      "are read at epoch ends)")


# --------------------------------------------------------------------------- data
def subject_of(c, volume: Volume) -> str:
  """The subject a volume belongs to (M&Ms: `<code>_ED` and `<code>_ES` are one subject)."""
  if c.data.source == "mnms" and not _user_site(c, volume.domain):
    return volume.id.rsplit("_", 1)[0]
  return volume.id


def _user_site(c, site: str) -> bool:
  names = {entry.partition("=")[0].strip() for entry in c.data.user}
  return any(site == u or site.startswith(f"{u}_") for u in names)


def load_domains(c, workdir: pathlib.Path) -> DomainVolumes:
  """The built-in source's sites (unless the source site is yours and data.root is empty)
  and your sites from data.user."""
  cache = files.data_cache_dir(c.data.cache_dir, workdir)
  domains, descriptions = {}, []
  builtin = DomainVolumes({})
  if c.data.source == "cc359" and c.data.root:
    from medda_jax.data import cc359
    builtin = cc359.load_cc359(c.data.root, spacing=tuple(c.data.spacing), cache_dir=cache,
                               layout=c.data.layout)
  elif c.data.source == "mnms" and c.data.root:
    from medda_jax.data import mnms
    builtin = mnms.load_mnms(c.data.root, cache_dir=cache)
  elif c.data.source == "demo_skull":
    from medda_jax.data import demo_skull
    builtin = demo_skull.build_demo_skull(image_size=c.data.patch,
                                          subjects_per_domain=c.data.subjects_per_domain,
                                          seed=c.data.split_seed,
                                          cache_dir=files.demo_cache_dir(c.data.cache_dir))
  domains.update(builtin.domains)
  if builtin.description:
    descriptions.append(builtin.description)
  if c.data.user:
    for site, (volumes, description) in user_seg.config_sites(c, cache, domains).items():
      domains[site] = volumes
      descriptions.append(description)
  return DomainVolumes(domains, "; ".join(descriptions))


# --------------------------------------------------------------------------- experiment
class Study:
  """What the runs share: sites and splits, the network, one compiled step per optimiser,
  the predictor and the writers."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c, self.workdir = c, workdir
    self.domains = load_domains(c, workdir)
    source = c.data.train_site
    if source not in self.domains.domains:
      raise ConfigError(f"config.data.train_site={source!r} is not in the data; available: "
                        f"{self.domains.names()}")
    volumes = self.domains[source]
    # held out by subject: M&Ms gives two volumes (ED, ES) per subject
    subjects = list(dict.fromkeys(subject_of(c, v) for v in volumes))
    if len(subjects) <= c.data.test_subjects:
      raise ConfigError(f"site {source} has {len(subjects)} subjects; config.data."
                        f"test_subjects={c.data.test_subjects} leaves none for training")
    test_ids, _ = split_ids(len(subjects), (c.data.test_subjects, -1), c.data.split_seed)
    held = {subjects[i] for i in test_ids}
    test = [i for i, v in enumerate(volumes) if subject_of(c, v) in held]
    self.train_volumes = [v for v in volumes if subject_of(c, v) not in held]
    # evaluation sets: the source's held-out subjects, then every other site
    self.eval_sets = {f"{source} test": [volumes[i] for i in test]}
    for site in self.domains.names():
      if site != source:
        self.eval_sets[site] = self.domains[site][:c.data.max_target_volumes or None]
    # your sites are binary (data/user_seg.py); the built-in sources have their label names
    self.classes = (("foreground",) if _user_site(c, source) else CLASS_NAMES[c.data.source])
    self.model = nnunet2d.NnUNet2D(num_classes=len(self.classes) + 1, stages=c.model.stages,
                                   base=c.model.base, cap=c.model.cap,
                                   dtype=cu.compute_dtype(c))
    self.inner_loop = cu.inner_loop(c)
    self.mesh = parallel.data_mesh()
    self.writer = MetricWriter(workdir)
    self._steps: dict[tuple, object] = {}
    example = jnp.zeros((1, c.data.patch, c.data.patch, 1))
    self._init = compile_init(lambda k: self.model.init(k, example))
    self._predict = batch_predictor(
        lambda v, x: jnp.argmax(self.model.apply(v, x)[0], axis=-1).astype(jnp.uint8),
        c.engine.eval_batch_size, self.mesh)
    self.pool = mixed.SlicePool.of(self.train_volumes)

  def optimizer(self, name: str, epochs: int):
    o = self.c.optim[name]
    return paper.optimizer(name, learning_rate=o.learning_rate,
                           total_steps=epochs * self.c.train.steps_per_epoch,
                           schedule=self.c.train.schedule, weight_decay=o.weight_decay,
                           settings=o)

  def step_fn(self, name: str, tx):
    """One compiled chunk per optimiser: its numbers live in its state."""
    if name not in self._steps:
      self._steps[name] = build_train_chunk(paper.training_loss(self.model), tx,
                                            self.inner_loop, mesh=self.mesh)
    return self._steps[name]

  def train(self, column: str, name: str, epochs: int, seed: int):
    """One run; returns (params, per-epoch layer update sizes, loss curve)."""
    c = self.c
    tx = self.optimizer(name, epochs)
    params = self._init(jax.random.PRNGKey(seed))["params"]
    state = parallel.replicate(TrainState.create(params, tx, rng=jax.random.PRNGKey(seed)),
                               self.mesh)
    steps = epochs * c.train.steps_per_epoch
    spc = c.engine.steps_per_call
    ds = augment.training_batches(
        self.pool, patch=c.data.patch, batch_size=c.train.batch_size, total_steps=steps,
        steps_per_call=spc, settings=augment.AugmentSettings.of(c.augment), seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=c.data.threads,
                                                   prefetch_buffer_size=4)))
    hook = paper.EpochUpdateSizes(c.train.steps_per_epoch, spc)
    ckpt_dir = self.workdir / "checkpoints" / f"{column}_seed{seed}"
    ckpt = Checkpointer(ckpt_dir)
    try:
      result = run_loop(
          f"{column}/seed{seed}", state, self.step_fn(name, tx), it, total_calls=steps // spc,
          steps_per_call=spc, checkpointer=ckpt, writer=self.writer,
          checkpoint_every=c.engine.checkpoint_every,
          prepare=lambda b: parallel.global_batch({"images": b["images"], "masks": b["masks"]},
                                                  self.mesh, "data", batch_dim=1),
          description=f"{column} seed {seed}", hook=hook)
    finally:
      ckpt.close()
    return result.state.params, hook.epochs, result.curve, ckpt_dir

  def predict_volume(self, params, volume: Volume) -> np.ndarray:
    """Slice-wise argmax labels of a whole volume, padded in-plane to a multiple of
    2^(stages - 1) with the volume minimum."""
    _, h, w = volume.image.shape
    m = 2 ** (self.c.model.stages - 1)
    image = np.asarray(volume.image)
    image = np.pad(image, ((0, 0), (0, (-h) % m), (0, (-w) % m)), constant_values=image.min())
    return self._predict({"params": params}, image[..., None].astype(np.float32))[:, :h, :w]

  def evaluate(self, params) -> dict:
    """{evaluation set: {volume id: {class: {sdice, dice}}}}."""
    out = {}
    for name, volumes in self.eval_sets.items():
      out[name] = {}
      for v in volumes:
        pred, gt = self.predict_volume(params, v), np.asarray(v.mask)
        out[name][v.id] = {
            cls: {"sdice": metrics_lib.surface_dice(pred == k, gt == k, v.spacing,
                                                    self.c.eval.tolerance_mm),
                  "dice": metrics_lib.dice_3d(pred == k, gt == k)}
            for k, cls in enumerate(self.classes, start=1)}
    return out


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  study = Study(c, workdir)
  user = _user_site(c, c.data.train_site) or any(_user_site(c, s) for s in study.eval_sets)
  demo = c.data.source == "demo_skull"
  aug = "on" if c.augment.enabled else "off (no-augmentation ablation)"
  if parallel.is_main_process():
    print(f"data: {study.domains.description}\nsource {c.data.train_site} "
          f"({len(study.train_volumes)} training volumes); evaluated on "
          f"{list(study.eval_sets)}; runs {[r[0] for r in c.runs]}; seeds {list(c.seeds)}; "
          f"augmentation {aug}", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  with Progress("runs", len(c.runs) * len(c.seeds), sum(
      runs.done(report.run_key(col, s)) for col, _, _ in c.runs for s in c.seeds)) as progress:
    for column, name, epochs in c.runs:
      for seed in c.seeds:
        key = report.run_key(column, seed)
        if runs.done(key):
          continue
        params, sizes, curve, ckpt_dir = study.train(column, name, epochs, seed)
        runs.record(key, {"optimizer": name, "epochs": epochs, "volumes": study.evaluate(params),
                          "update_sizes": sizes, "final_loss": curve[-1]})
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
        progress.update(1)

  parts = []
  if demo:
    parts.append("DEMO DATA (one real head MRI, synthetic subjects and scanner sites) — not a "
                 "reproduction of the paper's numbers")
  elif c.data.source in ("cc359", "mnms") and c.data.root:
    parts.append({"cc359": "CC-359", "mnms": "M&Ms"}[c.data.source])
  if user:
    parts.append("your sites: " + ", ".join(s for s in [c.data.train_site, *study.eval_sets]
                                              if _user_site(c, s.removesuffix(" test"))))
  parts.append(f"augmentation {aug}")
  label = "; ".join(parts)
  table = report.summarise(runs.runs, c, list(study.eval_sets), study.classes)
  final = {f"{c.eval.metric}/{cls}/{row}/{col}": cell[0]
           for cls, rows in table.items() for row, cols in rows.items()
           for col, cell in cols.items()}
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", report.tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "metric": c.eval.metric,
         "source": c.data.train_site, "runs": [list(r) for r in c.runs],
         "seeds": list(c.seeds), "augmentation": bool(c.augment.enabled),
         "tolerance_mm": c.eval.tolerance_mm, "table": table}, indent=1))
    figures.update_sizes_figure(workdir / "update_sizes.png", runs.runs, c,
                                title="mean |Δw| per layer group and epoch"
                                + (" (demo data)" if demo else ""))
    study.writer.write("final", 0, final)
  study.writer.close()
  return final
