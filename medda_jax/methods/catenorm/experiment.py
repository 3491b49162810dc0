"""The CateNorm experiment: config check, sites, one training run per (method, site or all
sites, seed) on the engine loop, per-class Dice of the held-out volumes, and the driver."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Callable

import jax
import ml_collections
import numpy as np
from scipy import ndimage

from medda_jax import config_utils as cu
from medda_jax import files, metrics, parallel
from medda_jax.data import user_seg
from medda_jax.data.prostate import context_channels
from medda_jax.data.volumes import Volume, split_ids
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init, compile_step
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.trainer import KeepBest, call_batches, variables as state_variables
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.catenorm import paper
from medda_jax.methods.catenorm.figures import prediction_figure, save_prediction
from medda_jax.methods.catenorm.report import summarise, tables_markdown
from medda_jax.models import dualnorm_unet as dn

# method -> (ordinary norm, CNRB blocks)
METHODS = {
    "bn": ("bn", ()),
    # The control of equal length: the BN run continued from its own stage-1 weights for
    # stage 2's iterations (fresh Adam), so CateNorm's rows are not ahead by training twice
    # as long.
    "bn_continued": ("bn", ()),
    "in": ("in", ()),
    "gn": ("gn", ()),
    "dsbn": ("dsbn", ()),
    "catenorm_block1": ("bn", dn.BLOCK_1),
    "catenorm_block1-4": ("bn", dn.BLOCKS_1_TO_4),
}
RESULTS_FILE = "runs.json"
SOURCES = ("prostate", "btcv", "demo_brain", "none")

# Demo classes: merged AAL structures of medda_jax.data.demo_brain.
DEMO_CLASSES = {
    "cortex": ("frontal", "insula", "cingulate", "occipital", "parietal", "temporal",
               "hippocampus", "amygdala"),
    "deep grey": ("caudate", "putamen", "pallidum", "thalamus"),
    "cerebellum": ("cerebellum",),
}


def is_catenorm(method: str) -> bool:
  return bool(METHODS[method][1])


def starts_from_stage1(method: str) -> bool:
  return is_catenorm(method) or method == "bn_continued"


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "mode", ("single", "multi"))
  cu.check_subset(c, "methods", tuple(METHODS))
  if "dsbn" in c.methods and c.mode != "multi":
    raise ConfigError("config.methods has 'dsbn', which needs several domains in one "
                      "network: set config.mode='multi'")
  if (any(is_catenorm(m) for m in c.methods) and not c.stage2_from_scratch
      and "bn" not in c.methods):
    raise ConfigError("config.methods needs 'bn' (CateNorm's stage 1) unless "
                      "config.stage2_from_scratch=True")
  if "bn_continued" in c.methods and (c.stage2_from_scratch or "bn" not in c.methods):
    raise ConfigError("config.methods has 'bn_continued' (BN continued from its stage-1 run), "
                      "which needs 'bn' in config.methods and config.stage2_from_scratch=False")
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_choice(c, "data.source", SOURCES)
  if c.data.source in ("prostate", "btcv") and not c.data.root:
    raise ConfigError(f"config.data.root must name the {c.data.source} folder when "
                      f"config.data.source={c.data.source!r} (or use configs/catenorm.py:demo)")
  user_seg.check_site_fields(c)
  widths = tuple(c.model.widths)
  if len(widths) != 5 or not all(isinstance(w, int) and w >= 2 and w % 2 == 0 for w in widths):
    raise ConfigError(f"config.model.widths={widths!r} must be five even integers >= 2")
  cu.check_range(c, "data.image_size", 16, 1024, integer=True)
  if c.data.image_size % 16:
    raise ConfigError(f"config.data.image_size={c.data.image_size} must be divisible by 16 "
                      "(four down-samplings of the U-Net)")
  cu.check_range(c, "data.test_volumes", 1, integer=True)
  cu.check_range(c, "data.val_volumes", 1, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "data.subjects_per_anatomy", 2, integer=True)
  cu.check_range(c, "data.other_slice_probability", 0.0, 1.0)
  cu.check_range(c, "loss.dice_weight", 0.0, 1.0)
  cu.check_range(c, "train.iterations", 1, integer=True)
  cu.check_range(c, "train.batch_size", 1, integer=True)
  cu.check_range(c, "train.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "train.b1", 0.0, 0.999999)
  cu.check_range(c, "train.b2", 0.0, 0.999999)
  cu.check_range(c, "train.clip_value", 0.0, low_inclusive=False)
  cu.check_range(c, "train.plateau_every", 1, integer=True)
  cu.check_range(c, "train.plateau_factor", 0.0, 1.0, low_inclusive=False)
  cu.check_range(c, "train.plateau_patience", 0, integer=True)
  cu.check_range(c, "train.min_lr", 0.0)
  cu.check_range(c, "train.rotation_degrees", 0.0, 180.0)
  cu.check_range(c, "eval.every_calls", 1, integer=True)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  cu.validate_shared(c)
  if c.train.iterations % c.engine.steps_per_call:
    raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                      f"config.train.iterations={c.train.iterations}")


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class Sites:
  volumes: dict[str, list[Volume]]   # site -> volumes, masks of class ids
  class_names: dict[int, str]        # foreground class id -> name
  description: str
  demo: bool


def demo_sites(c, cache) -> Sites:
  """Real brain atlases, synthetic sites: a site is an anatomy (Colin27 or MNI152, each
  with seeded deformations as subjects; "all" = both) seen through one synthetic scanner
  style, e.g. `colin27_t1w`, `all_t2w_like`; the classes merge AAL structures."""
  from medda_jax.data import demo_brain
  collection = demo_brain.build_demo_brain(c.data.image_size, c.data.subjects_per_anatomy,
                                           c.data.split_seed, cache)
  lut = np.zeros(256, np.uint8)
  for value, (_, structures) in enumerate(DEMO_CLASSES.items(), start=1):
    for s in structures:
      lut[demo_brain.STRUCTURE_VALUE[s]] = value
  structure_bank = collection.datasets[demo_brain.dataset_name("thalamus", "t1w")].labels
  out = {}
  for site in c.data.sites:
    anatomy, _, style = site.partition("_")
    anatomies = demo_brain.ANATOMIES if anatomy == "all" else (anatomy,)
    if anatomies[0] not in demo_brain.ANATOMIES or style not in demo_brain.DEMO_STYLES:
      known = [f"{a}_{s}" for a in demo_brain.ANATOMIES + ("all",)
               for s in demo_brain.DEMO_STYLES]
      raise ConfigError(f"config.data.sites entry {site!r} is not a demo site; known: {known}")
    brain = collection.datasets[demo_brain.dataset_name("brain", style)]
    volumes = []
    for v, name in enumerate(brain.volume_names):
      if name.rpartition("_")[0] not in anatomies:
        continue
      rows = brain.rows[brain.volume == v]
      volumes.append(Volume(id=name, domain=site, image=np.asarray(brain.images[rows]),
                            mask=lut[structure_bank[rows]], spacing=(2.0, 2.0, 2.0)))
    out[site] = volumes
  names = {i: n for i, n in enumerate(DEMO_CLASSES, start=1)}
  return Sites(out, names, "real brain atlases (Colin27 + AAL, MNI152); sites synthetic "
               f"({', '.join(c.data.sites)}), {c.data.image_size} px", True)


def load_sites(c, workdir: pathlib.Path) -> Sites:
  cache = files.data_cache_dir(c.data.cache_dir, workdir)
  if c.data.source == "demo_brain":
    sites = demo_sites(c, files.demo_cache_dir(c.data.cache_dir))
  elif c.data.source == "prostate":
    from medda_jax.data import prostate
    loaded = prostate.load_prostate(c.data.root, image_size=c.data.image_size,
                                    sites=tuple(c.data.sites), cache_dir=cache,
                                    split_file=c.data.split_file or None)
    sites = Sites(dict(loaded.domains), {1: "prostate"}, loaded.description, False)
  elif c.data.source == "btcv":
    from medda_jax.data import btcv
    loaded = btcv.load_btcv(c.data.root, image_size=c.data.image_size,
                            ct_window=tuple(c.data.ct_window), cache_dir=cache)
    sites = Sites(dict(loaded.domains), dict(enumerate(btcv.ORGANS, start=1)),
                  loaded.description, False)
  else:
    sites = Sites({}, {}, "", False)
  if c.data.user:
    descriptions = [sites.description] if sites.description else []
    loaded = user_seg.config_sites(c, cache, sites.volumes, keep_labels=True)
    for site, (volumes, description) in loaded.items():
      volumes = [_fit_user_volume(v, c.data.image_size) for v in volumes]
      sites.volumes[site] = volumes
      for value in np.unique(np.concatenate([np.unique(v.mask) for v in volumes])):
        if value > 0:
          sites.class_names.setdefault(int(value), f"label {int(value)}")
      descriptions.append(description)
    sites.description = "; ".join(descriptions)
  for site, volumes in sites.volumes.items():
    need = c.data.test_volumes + c.data.val_volumes + 1
    if len(volumes) < need:
      raise ConfigError(f"site {site} has {len(volumes)} volumes; config.data.test_volumes + "
                        f"config.data.val_volumes = {need - 1} leaves none for training")
  return sites


def _fit_user_volume(v: Volume, size: int) -> Volume:
  """A user's volume z-scored and resized in-plane to size x size (labels nearest)."""
  from skimage.transform import resize
  image = np.asarray(v.image, np.float32)
  image = (image - image.mean()) / max(float(image.std()), 1e-6)
  s, h, w = image.shape
  if (h, w) != (size, size):
    image = resize(image, (s, size, size), order=1, preserve_range=True,
                   anti_aliasing=True).astype(np.float32)
    mask = resize(np.asarray(v.mask), (s, size, size), order=0, preserve_range=True,
                  anti_aliasing=False).astype(np.uint8)
  else:
    mask = np.asarray(v.mask, np.uint8)
  spacing = (v.spacing[0], v.spacing[1] * h / size, v.spacing[2] * w / size)
  return Volume(v.id, v.domain, image, mask, spacing)


@dataclasses.dataclass(frozen=True)
class Split:
  train: list[Volume]
  val: list[Volume]
  test: list[Volume]


def split_site(volumes: list[Volume], c) -> Split:
  test, val, train = split_ids(len(volumes), (c.data.test_volumes, c.data.val_volumes, -1),
                               c.data.split_seed)
  return Split([volumes[i] for i in train], [volumes[i] for i in val],
               [volumes[i] for i in test])


def training_slices(volumes: list[Volume], other_probability: float, seed: int) -> np.ndarray:
  """[(volume, slice)] of the slices inside each mask's z-range (preprocessing of the
  paper: out-of-mask slices dropped), plus others with `other_probability`."""
  rng = np.random.default_rng([seed, 11])
  pairs = []
  for i, v in enumerate(volumes):
    present = np.flatnonzero(np.asarray(v.mask).any(axis=(1, 2)))
    keep = rng.random(v.num_slices) < other_probability
    if present.size:
      keep[present[0]:present[-1] + 1] = True
    pairs += [(i, s) for s in np.flatnonzero(keep)]
  if not pairs:
    raise DataError("the training volumes hold no labelled slice")
  return np.asarray(pairs)


def volume_inputs(volume: Volume) -> np.ndarray:
  """[S, H, W, 3]: every slice with its two neighbours as channels."""
  image = np.asarray(volume.image, np.float32)
  return np.stack([context_channels(image, i) for i in range(volume.num_slices)])


# --------------------------------------------------------------------------- experiment
class Experiment:
  def __init__(self, c, workdir: pathlib.Path):
    self.c = c
    self.workdir = workdir
    self.sites = load_sites(c, workdir)
    if not self.sites.volumes:
      raise DataError("no site to train on: config.data gives none")
    self.site_names = list(self.sites.volumes)
    self.splits = {s: split_site(v, c) for s, v in self.sites.volumes.items()}
    self.n_classes = max(self.sites.class_names) + 1
    self.inner_loop = cu.inner_loop(c)
    self.dtype = cu.compute_dtype(c)
    self.writer = MetricWriter(workdir)
    self.schedule = paper.plateau(c.train.plateau_every, c.train.plateau_factor,
                                  c.train.plateau_patience, c.train.min_lr,
                                  c.train.learning_rate)
    self._compiled: dict[tuple, tuple[Callable, Callable, Callable]] = {}
    self._stage1: dict[tuple, dict] = {}

  # ---- models
  def model(self, method: str) -> dn.DualNormUNet:
    norm, cnrb = METHODS[method]
    return dn.DualNormUNet(self.n_classes, cnrb_blocks=cnrb, in_ch=3,
                           widths=tuple(self.c.model.widths), norm=norm,
                           n_domains=len(self.site_names), dtype=self.dtype)

  def compiled(self, method: str):
    """(init, chunk, predict) of a method, compiled once and shared by its runs (all
    numbers that differ between runs live in the state)."""
    arch = METHODS[method]  # bn and bn_continued share one compiled network and step
    if arch not in self._compiled:
      model = self.model(method)
      size = self.c.data.image_size
      init = compile_init(lambda key: dn.init_variables(model, key, size))
      step = paper.build_train_step(model, catenorm=is_catenorm(method),
                                    dice_weight=self.c.loss.dice_weight,
                                    clip_value=self.c.train.clip_value,
                                    schedule=self.schedule, b1=self.c.train.b1,
                                    b2=self.c.train.b2)
      chunk = compile_step(paper.chunk_of(step, self.inner_loop))
      predict = batch_predictor(paper.predict_labels(model, is_catenorm(method)),
                                self.c.engine.eval_batch_size)
      self._compiled[arch] = (init, chunk, predict)
    return self._compiled[arch]

  # ---- data
  def batch_maker(self, volumes: list[Volume], domains: list[int], seed: int):
    c = self.c
    pairs = training_slices(volumes, c.data.other_slice_probability, seed)
    spc, bs = c.engine.steps_per_call, c.train.batch_size

    def make(k: int) -> dict:
      rng = np.random.default_rng([seed, int(k)])
      picks = pairs[rng.integers(0, len(pairs), spc * bs)]
      images, labels = [], []
      for vi, si in picks:
        x = context_channels(np.asarray(volumes[vi].image, np.float32), int(si))
        y = np.asarray(volumes[vi].mask[si])
        if c.train.flip and rng.random() < 0.5:
          x, y = x[:, ::-1], y[:, ::-1]
        if c.train.rotation_degrees > 0:
          angle = rng.uniform(-c.train.rotation_degrees, c.train.rotation_degrees)
          x = ndimage.rotate(x, angle, axes=(0, 1), reshape=False, order=1, mode="nearest")
          y = ndimage.rotate(y, angle, axes=(0, 1), reshape=False, order=0, mode="constant")
        images.append(x)
        labels.append(y)
      size = c.data.image_size
      return {"images": np.stack(images).astype(np.float32).reshape(spc, bs, size, size, 3),
              "labels": np.stack(labels).astype(np.int32).reshape(spc, bs, size, size),
              "domains": np.asarray([domains[vi] for vi, _ in picks],
                                    np.int32).reshape(spc, bs)}
    return make

  # ---- evaluation
  def predict(self, method: str, variables, volume: Volume, domain: int):
    _, _, predict = self.compiled(method)
    x = volume_inputs(volume)
    bn, final = predict(variables, {"images": x,
                                    "domains": np.full((len(x),), domain, np.int32)})
    return bn, final

  def score(self, method: str, variables, volumes: list[Volume], domains: list[int],
            assd: bool = True) -> dict:
    """{"final" | "bn_pass": {"dice" | "assd": {class name | "mean": mean over volumes}}}
    (Dice as a fraction, ASSD in voxels; `assd=False` skips the distances)."""
    classes = self.sites.class_names
    out = {"final": [], "bn_pass": []}
    for v, d in zip(volumes, domains):
      bn, final = self.predict(method, variables, v, d)
      gt = np.asarray(v.mask)
      for name, pred in (("final", final), ("bn_pass", bn)):
        if assd:
          out[name].append(metrics.per_class_scores(pred, gt, tuple(classes)))
        else:
          out[name].append({c: {"dice": metrics.dice_binary(pred == c, gt == c),
                                "assd": float("nan")} for c in classes})
    result = {}
    for name, per in out.items():
      rows = metrics.summarise_volumes(per, classes)
      result[name] = {m: {row: rows[row][f"{m}_mean"] for row in rows}
                      for m in (("dice", "assd") if assd else ("dice",))}
    return result

  def val_score(self, method, variables, volumes, domains) -> float:
    return float(self.score(method, variables, volumes, domains, assd=False)["final"]["dice"]
                 ["mean"])

  # ---- one run
  def run(self, method: str, seed: int, train: list[Volume], train_domains: list[int],
          val: list[Volume], val_domains: list[int], key: str) -> dict:
    c = self.c
    init, chunk, _ = self.compiled(method)
    fresh = init(jax.random.PRNGKey(seed))
    if starts_from_stage1(method) and not c.stage2_from_scratch:
      fresh = paper.stage2_variables(self.stage1(key, seed, train, train_domains, val,
                                                 val_domains), fresh, METHODS[method][1])
    state = paper.create_state(fresh, METHODS[method][1], c.train.learning_rate,
                               self.schedule, b1=c.train.b1, b2=c.train.b2, seed=seed)
    spc = c.engine.steps_per_call
    calls = c.train.iterations // spc
    hook = KeepBest(lambda v: self.val_score(method, v, val, val_domains),
                    every=c.eval.every_calls)
    best = jax.device_get(state_variables(state))

    def step(s, batch):
      trained, m = chunk(s[0], batch)
      return (trained, s[1]), m

    ckpt = Checkpointer(self.checkpoint_dir(key))
    try:
      result = run_loop(key, (state, best), step,
                        call_batches(calls, self.batch_maker(train, train_domains, seed)),
                        total_calls=calls, steps_per_call=spc, checkpointer=ckpt,
                        writer=self.writer, checkpoint_every=c.engine.checkpoint_every,
                        hook=hook, show_progress=parallel.is_main_process(),
                        log_keys=("loss", "loss_bn", "loss_cn", "hard_dice_loss", "lr"))
    finally:
      ckpt.close()
    final_state, best = result.state
    last = jax.device_get(state_variables(final_state))
    if method == "bn":
      self._stage1[key] = last
    return {"last": last, "best": jax.device_get(best), "best_val": hook.best_score,
            "final_loss": result.curve[-1]}

  def checkpoint_dir(self, key: str) -> pathlib.Path:
    return self.workdir / "checkpoints" / key.replace("/", "_")

  def stage1(self, key: str, seed, train, train_domains, val, val_domains) -> dict:
    """The BN run of the same site and seed (its last weights): from this process, or
    restored from its checkpoint (kept for this), or trained now."""
    bn_key = bn_key_of(key)
    if bn_key not in self._stage1:
      directory = self.checkpoint_dir(bn_key)
      if directory.exists():
        init, _, _ = self.compiled("bn")
        like_vars = init(jax.random.PRNGKey(seed))
        like = paper.create_state(like_vars, (), self.c.train.learning_rate, self.schedule)
        ckpt = Checkpointer(directory)
        try:
          (state, _), _ = ckpt.restore((like, jax.device_get(state_variables(like))))
        finally:
          ckpt.close()
        self._stage1[bn_key] = jax.device_get(state_variables(state))
      else:
        self.run("bn", seed, train, train_domains, val, val_domains, bn_key)
    return self._stage1[bn_key]


def run_key(mode_site: str, method: str, seed: int) -> str:
  return f"{mode_site}/{method}/seed{seed}"


def bn_key_of(key: str) -> str:
  site, _, seed = key.split("/")
  return f"{site}/bn/{seed}"


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  main = parallel.is_main_process()
  if main:
    print(f"data: {exp.sites.description}\nmode {c.mode}; methods {list(c.methods)}; seeds "
          f"{list(c.seeds)}; classes {exp.sites.class_names}", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  methods = sorted(c.methods, key=lambda m: (m != "bn", list(METHODS).index(m)))
  if c.mode == "single":
    groups = [(site, [site]) for site in exp.site_names]
  else:
    groups = [("all", exp.site_names)]
  figure_site = exp.site_names[0]
  total = len(groups) * len(methods) * len(c.seeds)
  with Progress("catenorm runs", total) as progress:
    for group, members in groups:
      index = {s: exp.site_names.index(s) for s in members}
      train = [v for s in members for v in exp.splits[s].train]
      train_domains = [index[s] for s in members for _ in exp.splits[s].train]
      val = [v for s in members for v in exp.splits[s].val]
      val_domains = [index[s] for s in members for _ in exp.splits[s].val]
      for seed in c.seeds:
        for method in methods:
          key = run_key(group, method, seed)
          if not runs.done(key):
            out = exp.run(method, seed, train, train_domains, val, val_domains, key)
            record = {"method": method, "group": group, "seed": seed,
                      "best_val": out["best_val"], "final_loss": out["final_loss"],
                      "sites": {}}
            for s in members:
              test = exp.splits[s].test
              domains = [index[s]] * len(test)
              record["sites"][s] = {
                  "last": exp.score(method, out["last"], test, domains),
                  "val": exp.score(method, out["best"], test, domains)}
            if seed == c.seeds[0] and figure_site in members and main:
              volume = exp.splits[figure_site].test[0]
              bn, final = exp.predict(method, out["last"], volume, index[figure_site])
              save_prediction(workdir, method, volume, bn, final)
            runs.record(key, record)
            if method != "bn" or c.stage2_from_scratch or not any(
                starts_from_stage1(m) for m in methods):
              shutil.rmtree(exp.checkpoint_dir(key), ignore_errors=True)
          progress.update(1)

  table = summarise(runs.runs, methods, exp.site_names, list(c.seeds),
                    exp.sites.class_names)
  label = _label(c, exp)
  final = {}
  for selection, rows in table["tables"].items():
    for row, cells in rows.items():
      final[f"dice/{selection}/{row}"] = cells["mean"][0]
  if main:
    files.write_text(workdir / "results.md", tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "mode": c.mode, "methods": methods,
         "sites": exp.site_names, "seeds": list(c.seeds),
         "classes": {str(k): v for k, v in exp.sites.class_names.items()}, **table}, indent=1))
    prediction_figure(workdir, methods, exp.sites.class_names, figure_site,
                      demo=exp.sites.demo)
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final


def _label(c, exp: Experiment) -> str:
  parts = []
  if exp.sites.demo:
    parts.append("DEMO DATA (real brain atlases; sites synthetic) — not a reproduction of "
                 "the paper's numbers")
  elif c.data.source in ("prostate", "btcv"):
    parts.append(f"{c.data.source} from {c.data.root}")
  if c.data.user:
    users = [s for s in exp.site_names if any(
        s == e.partition("=")[0].strip() or s.startswith(e.partition("=")[0].strip() + "_")
        for e in c.data.user)]
    parts.append(f"your sites: {', '.join(users)}")
  return "; ".join(parts)
