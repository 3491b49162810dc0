"""The Fourier-domain-adaptation experiment: config checks, data and splits, the source
model (gradient transfer's pre-training, reused), similarity tables and donors, the beta
sweep on labelled target validation scans, and the test table (see the package docstring).
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
import zlib

import jax.numpy as jnp
import ml_collections
import numpy as np

from medda_jax import config_utils as cu
from medda_jax import files, losses, parallel
from medda_jax import metrics as metrics_lib
from medda_jax.data import prepared, user_seg
from medda_jax.data.volumes import Volume, split_ids
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.fda import figures, paper, report
from medda_jax.methods.gradient_transfer import experiment as gt
from medda_jax.models import unet2d_res

RESULTS_FILE = "fda_runs.json"
# Table columns (besides "no DA") and the donor mode each one restyles with.
METHOD_MODE = {"single": "none", "mst": "none", "srsim_3d": "3d", "srsim_2.5d": "2.5d",
               "srsim_2d": "2d"}
LOSSES = ("bce_dice", "bce")
OPTIMIZER = "sgd"  # the paper's (SGD, Nesterov momentum); checkpoints are named after it


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", ("demo_skull", "cc359", "none"))
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  if c.init_from and not pathlib.Path(c.init_from).expanduser().exists():
    raise ConfigError(f"config.init_from={c.init_from!r} does not exist (expected the workdir "
                      "of an earlier run, or one of its pre-training checkpoint folders)")
  user_seg.check_site_fields(c)
  if not c.data.pairs:
    raise ConfigError("config.data.pairs must list at least one (source, target) site pair")
  for pair in c.data.pairs:
    if len(pair) != 2 or pair[0] == pair[1]:
      raise ConfigError(f"config.data.pairs entry {pair!r} must be two different site names")
  if len(c.data.severity) != len(c.data.pairs) or not all(
      isinstance(s, str) and s for s in c.data.severity):
    raise ConfigError(f"config.data.severity must give one group name (e.g. 'severe') per "
                      f"pair of config.data.pairs: {len(c.data.pairs)} names, got "
                      f"{tuple(c.data.severity)!r}")
  if c.data.source == "cc359" and not c.data.root and gt._needs_builtin(c):
    raise ConfigError("config.data.root must name the CC359 folder (meta.csv + images/ + "
                      "masks/, or Original/ + Silver-standard/), or with config.data.layout="
                      "'tfds' the TFDS data dir, when config.data.source='cc359'")
  if c.data.root and gt._needs_builtin(c) and c.data.source == "cc359" and not pathlib.Path(
      c.data.root).expanduser().is_dir():
    raise DataError(f"config.data.root={c.data.root!r} is not a folder (expected the CC359 "
                    "folder, or with config.data.layout='tfds' the TFDS data dir)")
  cu.check_range(c, "data.crop", 16, 1024, integer=True)
  if c.data.crop % 8:
    raise ConfigError(f"config.data.crop={c.data.crop} must be divisible by 8 (three "
                      "down-samplings of the U-Net)")
  cu.check_range(c, "data.subjects_per_domain", 2, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "data.source_holdout", 0, integer=True)
  cu.check_range(c, "data.val_subjects", 1, integer=True)
  cu.check_range(c, "data.test_subjects", 1, integer=True)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "model.features", 1, 512, integer=True)
  cu.check_range(c, "batch_size", 1, integer=True)
  cu.check_range(c, "pretrain.epochs", 1, integer=True)
  cu.check_range(c, "pretrain.steps_per_epoch", 1, integer=True)
  cu.check_range(c, "pretrain.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "pretrain.decay_epoch", 0, integer=True)
  cu.check_range(c, "pretrain.decay_factor", 0.0, 1.0, low_inclusive=False)
  cu.check_choice(c, "loss", LOSSES)
  cu.check_range(c, "optim.sgd_momentum", 0.0, 0.999999)
  cu.check_choice(c, "fda.window", paper.WINDOWS)
  if not c.fda.betas:
    raise ConfigError("config.fda.betas must list at least one window size")
  for beta in c.fda.betas:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 0.5:
      raise ConfigError(f"config.fda.betas entry {beta!r} must be a number in [0, 0.5] (the "
                        "window radius as a fraction of the slice side)")
  cu.check_range(c, "fda.n_mst", 1, integer=True)
  cu.check_range(c, "fda.neighbours", 0, integer=True)
  cu.check_subset(c, "fda.methods", tuple(METHOD_MODE))
  cu.check_range(c, "fda.random_seed", 0, integer=True)
  cu.check_range(c, "fda.restyle_slices", 1, integer=True)
  cu.check_range(c, "srsim.scale", 0.0, 1.0, low_inclusive=False)
  cu.check_range(c, "srsim.kernel_size", 1, integer=True)
  cu.check_range(c, "srsim.sigma", 0.0, low_inclusive=False)
  cu.check_range(c, "srsim.gaussian_size", 1, integer=True)
  cu.check_range(c, "srsim.batch", 1, integer=True)
  cu.check_range(c, "eval.tolerance_mm", 0.0, low_inclusive=False)
  cu.validate_shared(c)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  steps = c.pretrain.epochs * c.pretrain.steps_per_epoch
  if steps % c.engine.steps_per_call:
    raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                      f"the pretrain steps (pretrain.epochs x pretrain.steps_per_epoch = {steps})")


def check_srsim_size(c, shape, where: str) -> None:
  """piq refuses saliency kernels larger than the downsized image; say which field to change."""
  small = min(shape) * c.srsim.scale
  if small < max(c.srsim.gaussian_size, c.srsim.kernel_size):
    raise ConfigError(f"{where} slices of {shape[0]}x{shape[1]} are {small:g} px after "
                      f"config.srsim.scale={c.srsim.scale:g}, smaller than the saliency "
                      f"kernels (config.srsim.gaussian_size={c.srsim.gaussian_size}); raise "
                      "the scale or lower the kernel size")


def fit(image: np.ndarray, shape) -> np.ndarray:
  """Centre crop / zero pad a slice to `shape` (a donor from a scan of another size)."""
  out = np.zeros(shape, np.float32)
  h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
  si, sj = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
  oi, oj = (shape[0] - h) // 2, (shape[1] - w) // 2
  out[oi:oi + h, oj:oj + w] = image[si:si + h, sj:sj + w]
  return out


def scores(pred: np.ndarray, volume: Volume, tolerance_mm: float) -> dict[str, float]:
  gt_mask = volume.mask.astype(bool)
  return {"sdice": float(metrics_lib.surface_dice(pred, gt_mask, volume.spacing, tolerance_mm)),
          "dice": float(metrics_lib.dice_3d(pred, gt_mask))}


# --------------------------------------------------------------------------- experiment
class FdaExperiment(gt.Experiment):
  """The source model comes from gradient transfer's trainer (its `pretrain`: the residual
  U-Net, mixed-batch stream, chunked steps, resumable loop); this adds the test-time swap."""

  def __init__(self, c, workdir: pathlib.Path):  # noqa: D107 - the parent's fields, FDA's splits
    self.c = c
    self.workdir = workdir
    self.domains = gt.load_domains(c, workdir)
    for pair in c.data.pairs:
      for site in pair:
        if site not in self.domains.domains:
          raise ConfigError(f"site {site!r} in config.data.pairs is not in the data; "
                            f"available: {self.domains.names()}")
    self.splits: dict[str, gt.SiteSplit] = {}  # source sites: training scans (= donors)
    self.targets: dict[str, dict[str, list[Volume]]] = {}  # target sites: val, test
    d = c.data
    for src in dict.fromkeys(p[0] for p in c.data.pairs):
      vols = self.domains[src]
      if len(vols) <= d.source_holdout:
        raise ConfigError(f"source site {src} has {len(vols)} scans; config.data."
                          f"source_holdout={d.source_holdout} leaves none for training")
      held, train = split_ids(len(vols), (d.source_holdout, -1), d.split_seed)
      self.splits[src] = gt.SiteSplit([vols[i] for i in train], [vols[i] for i in held])
    for tgt in dict.fromkeys(p[1] for p in c.data.pairs):
      vols = self.domains[tgt]
      if len(vols) < d.val_subjects + d.test_subjects:
        raise ConfigError(f"target site {tgt} has {len(vols)} scans; config.data.val_subjects"
                          f"={d.val_subjects} + config.data.test_subjects={d.test_subjects} "
                          "need more")
      test, val = split_ids(len(vols), (d.test_subjects, d.val_subjects), d.split_seed)
      self.targets[tgt] = {"val": [vols[i] for i in val], "test": [vols[i] for i in test]}
      for v in self.targets[tgt]["val"] + self.targets[tgt]["test"]:
        check_srsim_size(c, v.image.shape[1:], f"site {tgt}'s")
    self.inner_loop = cu.inner_loop(c)
    self.dtype = cu.compute_dtype(c)
    self.model = unet2d_res.ResUNet2D(features=c.model.features, dtype=self.dtype)
    self.channels = 1
    self.mesh = parallel.data_mesh()
    self.writer = MetricWriter(workdir)
    self._steps = {}
    self.pretrain_dir = {}
    self._source_opt_states = {}
    self._source_models = {}
    example = jnp.zeros((1, c.data.crop, c.data.crop, self.channels))
    self._init_model = compile_init(lambda k: self.model.init(k, example, train=False))
    self._predict = batch_predictor(lambda v, x: self.model.apply(v, x, train=False),
                                    c.engine.eval_batch_size, self.mesh)
    self._banks: dict = {}
    self._tables: dict = {}

  # ---- the source model
  def plain_loss(self, params, model_state, batch, rng):
    """The reference's ce_plus_dice, 0.4 BCE + 0.6 (1 - soft Dice), or plain BCE."""
    del rng
    logits, mutated = self.model.apply({"params": params, "batch_stats": model_state},
                                       batch["images"], train=True, mutable=["batch_stats"])
    bce = losses.bce(logits, batch["masks"])
    if self.c.loss == "bce":
      return bce, (mutated["batch_stats"], {})
    loss = 0.4 * bce + 0.6 * losses.dice_loss(logits, batch["masks"])
    return loss, (mutated["batch_stats"], {"bce": bce})

  def source_variables(self, site: str, seed: int) -> dict:
    state = self.pretrain(OPTIMIZER, site, seed)
    return {"params": state.params, "batch_stats": state.model_state}

  # ---- segmentation
  def logits(self, variables, images: np.ndarray) -> np.ndarray:
    """[N, H, W] slices -> [N, H, W] logits, padded in-plane to a multiple of 8."""
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, (-h) % 8), (0, (-w) % 8)),
                    constant_values=float(images.min()))
    return self._predict(variables, padded[..., None].astype(np.float32))[:, :h, :w, 0]

  # ---- donors
  def bank(self, src: str, shape) -> dict:
    """SR-SIM features of every training slice of the source site (fitted to `shape`), on
    the device, with each scan's first row and length."""
    key = (src, tuple(shape))
    if key not in self._banks:
      scans = self.splits[src].train
      images = np.concatenate([np.stack([fit(s, shape) for s in v.image]) for v in scans])
      sal, grad = self.features(images)
      lengths = np.array([v.num_slices for v in scans])
      self._banks[key] = {"sal": sal, "grad": grad, "lengths": lengths,
                          "offsets": np.concatenate([[0], np.cumsum(lengths)[:-1]])}
    return self._banks[key]

  def features(self, images: np.ndarray):
    """SR-SIM features of [N, H, W] slices, in calls of a fixed size (one compilation)."""
    s, size = self.c.srsim, self.c.srsim.batch
    out_sal, out_grad = [], []
    for start in range(0, len(images), size):
      chunk = images[start:start + size]
      real = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, 0)])
      sal, grad = paper.srsim_features_batch(
          jnp.asarray(chunk), scale=s.scale, kernel_size=s.kernel_size, sigma=s.sigma,
          gaussian_size=s.gaussian_size)
      out_sal.append(sal[:real])
      out_grad.append(grad[:real])
    return jnp.concatenate(out_sal), jnp.concatenate(out_grad)

  def table(self, src: str, volume: Volume) -> np.ndarray:
    """[Z, K, 2m+1] SR-SIM of the target scan's slices against the source scans' corresponding
    slices and their neighbours (NaN where none), cached in the workdir."""
    key = (src, volume.id)
    if key in self._tables:
      return self._tables[key]
    m = self.c.fda.neighbours
    scans = self.splits[src].train
    ids = [v.id for v in scans]
    path = self.workdir / "similarity" / f"{src}__{volume.id}.npz"
    if path.exists():
      with np.load(path) as f:
        if (list(f["source_ids"]) == ids and int(f["neighbours"]) == m
            and tuple(f["srsim"]) == self._srsim_key()
            and f["table"].shape[0] == volume.num_slices):
          self._tables[key] = f["table"]
          return self._tables[key]
    z, shape = volume.num_slices, volume.image.shape[1:]
    bank = self.bank(src, shape)
    slices, valid = paper.candidate_index(z, list(bank["lengths"]), m)
    index = bank["offsets"][None, :, None] + np.clip(slices, 0, bank["lengths"][None, :, None] - 1)
    t_sal, t_grad = self.features(np.asarray(volume.image, np.float32))
    size, rows = self.c.srsim.batch, []
    for start in range(0, z, size):
      idx = index[start:start + size]
      real = len(idx)
      idx = np.concatenate([idx, np.repeat(idx[-1:], size - real, 0)])
      sel = np.minimum(np.arange(start, start + size), z - 1)
      rows.append(np.asarray(paper.similarity_rows(t_sal[sel], t_grad[sel], bank["sal"],
                                                   bank["grad"], jnp.asarray(idx)))[:real])
    table = np.where(valid, np.concatenate(rows), np.nan)
    self._tables[key] = table
    if parallel.is_main_process():
      buf = io.BytesIO()
      np.savez(buf, table=table, source_ids=np.asarray(ids), neighbours=m,
               srsim=np.asarray(self._srsim_key()))
      path.parent.mkdir(parents=True, exist_ok=True)
      files.write_bytes(path, buf.getvalue())
      chosen = {mode: self.donors(src, volume, mode).tolist() for mode in ("3d", "2.5d", "2d")}
      files.write_text(path.with_name(path.stem + "_donors.json"), json.dumps(
          {"source_ids": ids, "n_mst": self.c.fda.n_mst, "neighbours": m,
           "donors": chosen, "format": "per target slice, n_mst [source scan, slice]"}))
    return table

  def _srsim_key(self) -> tuple:
    s = self.c.srsim
    return (float(s.scale), float(s.kernel_size), float(s.sigma), float(s.gaussian_size))

  def donors(self, src: str, volume: Volume, mode: str) -> np.ndarray:
    """[Z, n_MST, 2]: (source scan, source slice) of every donor of every target slice."""
    f, z = self.c.fda, volume.num_slices
    scans = self.splits[src].train
    if mode == "none":
      rng = np.random.default_rng([f.random_seed, zlib.crc32(volume.id.encode())])
      chosen = paper.select_donors(np.zeros((z, len(scans), 2 * f.neighbours + 1)), "none",
                                   f.n_mst, f.neighbours, rng)
    else:
      chosen = paper.select_donors(self.table(src, volume), mode, f.n_mst, f.neighbours)
    lengths = np.array([v.num_slices for v in scans])
    base = paper.corresponding_slice(np.arange(z)[:, None], z, lengths[chosen[:, :, 0]])
    slices = np.clip(base + chosen[:, :, 1], 0, lengths[chosen[:, :, 0]] - 1)
    return np.stack([chosen[:, :, 0], slices], axis=-1)

  def donor_probabilities(self, variables, src: str, volume: Volume, mode: str,
                          beta: float) -> np.ndarray:
    """[Z, n_MST, H, W]: the source model's probabilities on every restyled version of
    every slice (restyle and segment a fixed number of slices per call)."""
    f = self.c.fda
    donors = self.donors(src, volume, mode)
    scans = self.splits[src].train
    z, (h, w) = volume.num_slices, volume.image.shape[1:]
    size, restyled = f.restyle_slices, []
    for start in range(0, z, size):
      rows = [min(i, z - 1) for i in range(start, start + size)]
      donor_images = np.stack([[fit(scans[k].image[s], (h, w)) for k, s in donors[i]]
                               for i in rows])
      out = paper.restyle_slices(jnp.asarray(donor_images),
                                 jnp.asarray(volume.image[rows], jnp.float32),
                                 jnp.float32(beta), window=f.window)
      restyled.append(np.asarray(out)[:min(size, z - start)])
    # one prediction pass over all versions of all slices (full evaluation batches)
    logits = self.logits(variables, np.concatenate(restyled).reshape(-1, h, w))
    return 1.0 / (1.0 + np.exp(-logits.reshape(z, f.n_mst, h, w)))

  def method_predictions(self, variables, src, volume, mode, beta) -> dict[str, np.ndarray]:
    """Masks of every configured method that restyles with `mode`: single = the first
    random donor alone, the others = MST (probabilities averaged, then > 0.5)."""
    probs = self.donor_probabilities(variables, src, volume, mode, beta)
    out = {}
    for method in self.c.fda.methods:
      if METHOD_MODE[method] == mode:
        out[method] = (probs[:, 0] if method == "single" else probs.mean(axis=1)) > 0.5
    return out

  def no_adaptation(self, variables, volume: Volume) -> dict[str, float]:
    return scores(self.logits(variables, np.asarray(volume.image, np.float32)) > 0, volume,
                  self.c.eval.tolerance_mm)

  # ---- the protocol
  def validation_sweep(self, variables, src: str, tgt: str, title: str) -> dict:
    """sDice (mean over the target's validation scans) of every method at every beta."""
    c = self.c
    vols = self.targets[tgt]["val"]
    modes = list(dict.fromkeys(METHOD_MODE[m] for m in c.fda.methods))
    sweep = {m: [] for m in c.fda.methods}
    with Progress(title, len(c.fda.betas) * len(modes) * len(vols)) as progress:
      for beta in c.fda.betas:
        per = {m: [] for m in c.fda.methods}
        for mode in modes:
          for v in vols:
            for method, pred in self.method_predictions(variables, src, v, mode, beta).items():
              per[method].append(scores(pred, v, c.eval.tolerance_mm)["sdice"])
            progress.update(1)
        for method in c.fda.methods:
          sweep[method].append(float(np.mean(per[method])))
    no_da = float(np.mean([self.no_adaptation(variables, v)["sdice"] for v in vols]))
    return {"betas": list(c.fda.betas), "sdice": sweep, "no_da": no_da,
            "volumes": [v.id for v in vols]}

  def test(self, variables, src: str, tgt: str, betas: dict[str, dict[str, float]],
           title: str) -> dict:
    """Test-scan scores of the unadapted model and of every method at its averaged-optimal
    and per-pair-optimal beta (`betas[setting][method]`)."""
    c = self.c
    vols = self.targets[tgt]["test"]
    needed = sorted({(METHOD_MODE[m], betas[s][m]) for s in betas for m in c.fda.methods})
    per = {s: {m: [] for m in c.fda.methods} for s in betas}
    no_da = []
    with Progress(title, len(vols) * len(needed)) as progress:
      for v in vols:
        no_da.append(self.no_adaptation(variables, v))
        for mode, beta in needed:
          for method, pred in self.method_predictions(variables, src, v, mode, beta).items():
            score = None
            for setting in betas:
              if betas[setting][method] == beta:
                score = score or scores(pred, v, c.eval.tolerance_mm)
                per[setting][method].append(score)
          progress.update(1)
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in ("sdice", "dice")}  # noqa: E731
    out = {"no_da": mean(no_da), "volumes": [v.id for v in vols],
           "no_da_per_volume": [r["sdice"] for r in no_da]}
    for setting in betas:
      out[setting] = {m: dict(mean(per[setting][m]), beta=betas[setting][m],
                              per_volume=[r["sdice"] for r in per[setting][m]])
                      for m in c.fda.methods}
    return out


def pair_name(src: str, tgt: str) -> str:
  return f"{src}->{tgt}"


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = FdaExperiment(c, workdir)
  pairs = [tuple(p) for p in c.data.pairs]
  used = {s for p in pairs for s in p}
  user_sites = sorted(s for s in used if gt.user_site(c, s))
  demo = c.data.source == "demo_skull" and len(user_sites) < len(used)
  if parallel.is_main_process():
    print(f"data: {exp.domains.description}\npairs {pairs}; betas {list(c.fda.betas)}; "
          f"methods {list(c.fda.methods)}; n_MST {c.fda.n_mst}; seeds {list(c.seeds)}; "
          f"inner loop: {exp.inner_loop}", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)

  # 1. source models and the beta sweep on the labelled target validation scans
  for seed in c.seeds:
    for src, tgt in pairs:
      key = report.val_key(src, tgt, seed)
      if not runs.done(key):
        variables = exp.source_variables(src, seed)
        runs.record(key, exp.validation_sweep(variables, src, tgt,
                                              f"beta sweep {pair_name(src, tgt)} seed {seed}"))
  # 2. beta per pair and averaged over pairs, then the test scans
  for seed in c.seeds:
    chosen = report.select_betas(runs.runs, pairs, seed, c.fda.methods)
    for src, tgt in pairs:
      key = report.test_key(src, tgt, seed)
      if not runs.done(key):
        variables = exp.source_variables(src, seed)
        betas = {"avg": chosen["avg"], "pair": chosen["pair"][pair_name(src, tgt)]}
        runs.record(key, exp.test(variables, src, tgt, betas,
                                  f"test {pair_name(src, tgt)} seed {seed}"))

  table = report.summarise(runs.runs, c)
  parts = []
  if demo:
    parts.append("DEMO DATA (one real head MRI, synthetic subjects and scanner sites) — not a "
                 "reproduction of the paper's numbers")
  elif len(user_sites) < len(used):
    parts.append("CC359")
  if user_sites:
    parts.append(f"your sites: {', '.join(user_sites)}")
  label = "; ".join(parts)
  final = report.final_metrics(table)
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", report.tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "pairs": [list(p) for p in pairs],
         "severity": list(c.data.severity), "seeds": list(c.seeds),
         "betas": list(c.fda.betas), "window": c.fda.window, "n_mst": c.fda.n_mst,
         "tolerance_mm": c.eval.tolerance_mm, "table": table}, indent=1))
    figures.beta_curve(workdir / "beta_curve.png", runs.runs, c, demo)
    src, tgt = pairs[0]
    volume = exp.targets[tgt]["val"][0]
    fg = volume.mask.reshape(volume.num_slices, -1).sum(1)
    i = int(np.argmax(fg))
    k, s = exp.donors(src, volume, "2d")[i, 0]
    figures.restyled_slices(workdir / "restyled.png", volume.image[i],
                            fit(exp.splits[src].train[k].image[s], volume.image.shape[1:]),
                            c.fda.betas, c.fda.window,
                            f"{pair_name(src, tgt)}: target slice restyled by its most "
                            "similar source slice" + (" (demo data)" if demo else ""))
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
