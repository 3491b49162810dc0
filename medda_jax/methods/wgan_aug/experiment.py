"""The WGAN augmentation experiment: config, data, the class GANs, the classifiers, the sweep
over classifiers, synthetic counts and seeds, and the driver (see the package's docstring).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, parallel, plots
from medda_jax.data import images as user_images
from medda_jax.data.images import ImageSet
from medda_jax.engine import gan
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.trainer import fit
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.models.wgan import Critic, Generator
from medda_jax.methods.wgan_aug import pretrained
from medda_jax.methods.wgan_aug.paper import (class_counts, mirrored, mixed_training_set,
                                              synthetic_pool, wgan_losses)
from medda_jax.methods.wgan_aug.report import (by_synthetic_count, nan_to_none, parse_row,
                                               row_ids, summarise, tables_markdown)


SOURCES = ("digits", "busi", "breastmnist", "breast")
TARGETS = ("breast", "busi", "breastmnist", "optdigits", "mnist", "mnist_m")
CLASSIFIERS = ("resnet50", "vit_b16", "cnn_transformer")
RESULTS_FILE = "wgan_results.json"


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  source, source_path = user_images.parse_domain(c.data.source)
  if source_path is None:
    cu.check_choice(c, "data.source", SOURCES)
    if c.data.source != "digits" and not c.data.source_dir:
      raise ConfigError(f"config.data.source_dir must name the {c.data.source} data when "
                        f"config.data.source={c.data.source!r}")
  if not c.data.targets:
    raise ConfigError("config.data.targets must not be empty")
  parsed = [user_images.parse_domain(entry) for entry in c.data.targets]
  names = [source] + [t for t, _ in parsed]
  unknown = [t for t, path in parsed if path is None and t not in TARGETS]
  if unknown:
    raise ConfigError(f"config.data.targets has unknown entries {unknown}; allowed "
                      f"{list(TARGETS)} or name=path (a class-folder root or a .csv)")
  for target, path in parsed:
    if path is not None:
      continue
    if target not in ("optdigits", "mnist", "mnist_m") and not c.data.target_dirs.get(target):
      raise ConfigError(f"config.data.target_dirs.{target} must name the folder of target "
                        f"{target!r}")
  if len(set(names[1:])) != len(names) - 1:
    raise ConfigError(f"config.data.targets names a domain twice: {names[1:]}")
  positive, negative = tuple(c.data.positive_classes), tuple(c.data.negative_classes)
  if bool(positive) != bool(negative) or set(positive) & set(negative):
    raise ConfigError("config.data.positive_classes and config.data.negative_classes must "
                      "both be empty (a user domain of exactly two classes) or both name "
                      f"disjoint class names; got {list(positive)} and {list(negative)}")
  cu.check_range(c, "data.size", 8, 1024, integer=True)
  if c.data.size & (c.data.size - 1) or c.data.size < 8:
    raise ConfigError(f"config.data.size={c.data.size} must be a power of two >= 8 (the "
                      "WGAN doubles 4x4 up to it)")
  cu.check_choice(c, "data.channels", (1, 3))
  if c.data.n_real_train != 0:  # 0: every source image outside the test set
    cu.check_range(c, "data.n_real_train", 4, integer=True)
  if c.data.n_source_test != 0:  # 0: no source test set (Table 6's "real 780" columns)
    cu.check_range(c, "data.n_source_test", 2, integer=True)
  if c.data.n_target_test != 0:  # 0: every target image
    cu.check_range(c, "data.n_target_test", 2, integer=True)
  cu.check_range(c, "data.val_fraction", 0.0, 0.5, low_inclusive=False)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_choice(c, "gan.loss", ("wgan", "wgan_gp"))
  cu.check_choice(c, "gan.optimizer", ("rmsprop", "adam"))
  cu.check_range(c, "gan.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "gan.n_critic", 1, integer=True)
  cu.check_range(c, "gan.batch_size", 2, integer=True)
  cu.check_range(c, "gan.g_steps", 1, integer=True)
  cu.check_range(c, "gan.latent_dim", 1, integer=True)
  cu.check_range(c, "gan.gp_weight", 0.0)
  if c.gan.clip_value is not None:
    cu.check_range(c, "gan.clip_value", 0.0, low_inclusive=False)
  cu.check_range(c, "gan.steps_per_call", 1, integer=True)
  if c.gan.g_steps % c.gan.steps_per_call:
    raise ConfigError(f"config.gan.steps_per_call={c.gan.steps_per_call} must divide "
                      f"config.gan.g_steps={c.gan.g_steps}")
  cu.check_range(c, "gan.checkpoint_every", 1, integer=True)
  if not c.synthetic.counts or min(c.synthetic.counts) < 0:
    raise ConfigError("config.synthetic.counts must list synthetic image counts >= 0")
  cu.check_choice(c, "synthetic.class_split", ("proportional", "equal"))
  cu.check_range(c, "synthetic.samples_per_class", 1, integer=True)
  if any(not isinstance(k, int) or k < 0 for k in c.synthetic.mirror_counts):
    raise ConfigError("config.synthetic.mirror_counts must list synthetic image counts >= 0")
  cu.check_subset(c, "classifiers", CLASSIFIERS)
  for name in c.classifiers:
    if name not in c.classifier_overrides:
      raise ConfigError(f"config.classifier_overrides has no entry for {name!r} (use {{}} "
                        "for the paper's architecture)")
    weights = c.pretrained.get(name, "")
    if weights and name not in pretrained.PRETRAINED:
      raise ConfigError(f"config.pretrained.{name} must be empty: {name} has no torchvision "
                        f"ImageNet weights (only {list(pretrained.PRETRAINED)} do)")
    if weights and not pathlib.Path(weights).is_file():
      raise ConfigError(f"config.pretrained.{name}={weights!r} is not a file (a torchvision "
                        "state dict saved as .pth/.pt or .npz)")
  cu.check_range(c, "train.epochs", 1, integer=True)
  cu.check_range(c, "train.batch_size", 1, integer=True)
  cu.check_range(c, "train.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "train.weight_decay", 0.0)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.validate_shared(c)


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class Splits:
  gan_train: ImageSet    # every source image not in the source test set
  real_train: ImageSet   # the ratio experiment's real images (n_real_train)
  real_val: ImageSet     # drawn beside them (val_fraction of n_real_train): checkpoint selection
  source_test: ImageSet
  targets: dict[str, ImageSet]
  class_names: dict[int, str]
  description: str


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator,
               pool: np.ndarray | None = None) -> np.ndarray:
  """n indices from `pool` (default all) with class shares proportional to the pool's."""
  pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
  if n > len(pool):
    raise ConfigError(f"asked for {n} images but only {len(pool)} are available")
  classes, counts = np.unique(labels[pool], return_counts=True)
  shares = np.floor(counts / counts.sum() * n).astype(int)
  for i in np.argsort(-(counts / counts.sum() * n - shares))[: n - shares.sum()]:
    shares[i] += 1  # largest remainders first
  picks = [rng.choice(pool[labels[pool] == k], s, replace=False) for k, s in zip(classes, shares)]
  return np.sort(np.concatenate(picks))


def binary_table(c, table: user_images.ImageTable) -> tuple[user_images.ImageTable,
                                                             dict[int, str]]:
  """A user domain coded as the paper's two labels: `data.positive_classes` -> 1,
  `data.negative_classes` -> 0 (images of other classes dropped); both empty: the domain
  must have exactly two classes, the first in sorted order -> 0, the second -> 1."""
  positive, negative = tuple(c.data.positive_classes), tuple(c.data.negative_classes)
  if not positive:
    if len(table.class_names) != 2:
      raise DataError(f"domain {table.name} has {len(table.class_names)} classes "
                      f"{list(table.class_names)}; this method is binary: set "
                      "config.data.positive_classes and config.data.negative_classes")
    return table, {0: table.class_names[0], 1: table.class_names[1]}
  missing = [k for k in positive + negative if k not in table.class_names]
  if missing:
    raise DataError(f"domain {table.name} has no class {missing[0]!r} (its classes: "
                    f"{list(table.class_names)}); check config.data.positive_classes / "
                    "negative_classes")
  names = np.asarray(table.class_names)[table.labels]
  keep = np.flatnonzero(np.isin(names, positive + negative))
  table = table.subset(keep)
  coded = np.isin(np.asarray(table.class_names)[table.labels], positive).astype(np.int32)
  return (dataclasses.replace(table, labels=coded, class_names=("+".join(negative),
                                                                "+".join(positive))),
          {1: "+".join(positive), 0: "+".join(negative)})


def _user_domain(c, name: str, path: str, n: int | None = None,
                 seed: int = 0) -> tuple[ImageSet, dict[int, str], tuple | None]:
  """A user domain, binary-coded, decoded at the config's size and channels: every image,
  or a stratified draw of n (the target test images). Returns (images, class names,
  patient ids or None)."""
  table, class_names = binary_table(c, user_images.load_table(name, path))
  if n is not None and n < len(table):
    table = table.subset(stratified(table.labels, n, np.random.default_rng(seed)))
  source = user_images.ImageSource(table, c.data.size, c.data.channels)
  return user_images.read_set(source), class_names, table.patient_ids


def _domain(c, name: str, directory: str) -> tuple[ImageSet, dict[int, str]]:
  """One hospital's images, resized to the config's size, with the paper's label coding."""
  size, channels = c.data.size, c.data.channels
  if name in ("mnist", "optdigits", "mnist_m"):
    from medda_jax.data import digits
    domain = digits.binary_subset(
        digits.load_digit_domain(name, size=size, channels=channels, seed=c.data.split_seed),
        c.data.positive_digit, c.data.negative_digit)
    return (ImageSet(domain.images.astype(np.float32), domain.labels.astype(np.int32)),
            {1: f"digit {c.data.positive_digit}", 0: f"digit {c.data.negative_digit}"})
  from medda_jax.data import breast_us
  if name == "breastmnist":  # every published split: this method draws its own
    data = breast_us.load_breastmnist(directory, split="all", size=size)
  else:
    data = {"busi": breast_us.load_busi, "breast": breast_us.load_breast}[name](directory,
                                                                                size=size)
  images = data.images if channels == 1 else np.repeat(data.images, 3, axis=-1)
  return (ImageSet(images.astype(np.float32), data.labels.astype(np.int32)),
          {1: "benign", 0: "malignant"})


def load_splits(c) -> Splits:
  entry, user_path = user_images.parse_domain(c.data.source)
  groups = None
  if user_path is not None:
    source_name = entry
    source, class_names, groups = _user_domain(c, entry, user_path)
  else:
    source_name = c.data.digits_source if c.data.source == "digits" else c.data.source
    source, class_names = _domain(c, source_name, c.data.source_dir)
  if set(source.counts()) != {0, 1}:
    raise ConfigError(f"the source data must hold both classes, got counts {source.counts()}")
  rng = np.random.default_rng(c.data.split_seed)
  # With patient ids, whole patients go to the test set (and to validation), so that no
  # patient is both trained and tested on.
  draw = (lambda n, pool=None: stratified(source.labels, n, rng, pool)) if groups is None else (
      lambda n, pool=None: user_images.group_pick(groups, n, rng, pool))
  no_images = np.zeros(0, np.int64)
  test_idx = draw(c.data.n_source_test) if c.data.n_source_test else no_images
  train_pool = np.setdiff1d(np.arange(len(source.labels)), test_idx)
  if c.data.n_real_train == 0:
    # Every image outside the test set, a validation share of them held back (Table 1 /
    # Table 6: the paper's "Real (624)" reads as BreastMNIST's train 546 + val 78).
    real_idx = train_pool
    n_val = max(2, int(round(c.data.val_fraction * len(train_pool))))
  else:
    # n_real_train images to train on plus a validation share drawn beside them.
    n_val = max(2, int(round(c.data.val_fraction * c.data.n_real_train)))
    real_idx = stratified(source.labels, c.data.n_real_train + n_val, rng, train_pool)
  val_idx = draw(n_val, real_idx)
  targets = {}
  n_target = c.data.n_target_test or None  # None: every image
  for entry in c.data.targets:
    name, path = user_images.parse_domain(entry)
    if path is not None:
      targets[name] = _user_domain(c, name, path, n_target, int(rng.integers(2 ** 31)))[0]
      continue
    data, _ = _domain(c, name, c.data.target_dirs.get(name, ""))
    n = len(data.labels) if n_target is None else min(n_target, len(data.labels))
    targets[name] = data.take(stratified(data.labels, n, rng))
  splits = Splits(gan_train=source.take(train_pool),
                  real_train=source.take(np.setdiff1d(real_idx, val_idx)),
                  real_val=source.take(val_idx), source_test=source.take(test_idx),
                  targets=targets, class_names=class_names, description="")
  parts = [f"source {source_name}: GAN training {splits.gan_train.counts()}, real training "
           f"{splits.real_train.counts()} + validation {splits.real_val.counts()}, test "
           f"{splits.source_test.counts()}" + (" (split by patient)" if groups else "")]
  parts += [f"target {k}: test {v.counts()}" for k, v in targets.items()]
  splits.description = "; ".join(parts) + f" (labels: {class_names})"
  return splits


def domain_names(c) -> ml_collections.ConfigDict:
  """A copy of the config whose data.source / data.targets hold the domains' names only
  (`name=path` -> `name`), the form the tables and figures use."""
  named = ml_collections.ConfigDict(c.to_dict())
  named.data.source = user_images.parse_domain(c.data.source)[0]
  named.data.targets = tuple(user_images.parse_domain(t)[0] for t in c.data.targets)
  return named


# --------------------------------------------------------------------------- class GANs
def gan_batches(images: np.ndarray, calls: int, steps_per_call: int, n_critic: int,
                batch_size: int, seed: int) -> grain.MapDataset:
  """grain dataset of chunks [steps_per_call, n_critic, batch, ...] of real images in
  [-1, 1]; element k is a pure function of (seed, k), so a resumed run sees the same data.
  Each batch is drawn without replacement (with replacement if the class is smaller)."""
  scaled = images * 2.0 - 1.0

  def chunk(k):
    rng = np.random.default_rng((seed, k))
    n = steps_per_call * n_critic
    idx = np.stack([rng.choice(len(scaled), batch_size, replace=len(scaled) < batch_size)
                    for _ in range(n)])
    return {"image": scaled[idx].reshape(steps_per_call, n_critic, batch_size,
                                         *scaled.shape[1:])}

  return grain.MapDataset.range(calls).map(chunk)


def torch_rmsprop(learning_rate: float, alpha: float = 0.99,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """torch.optim.RMSprop (the reference's optimiser) with torch's defaults:
  v <- alpha v + (1 - alpha) g^2 from v = 0, p <- p - lr g / (sqrt(v) + eps). optax's
  rmsprop puts eps inside the root unless told, and decays by 0.9."""
  return optax.rmsprop(learning_rate, decay=alpha, eps=eps, eps_in_sqrt=False)


def gan_optimizer(g) -> optax.GradientTransformation:
  """The optimiser of either network from the config's `gan` fields."""
  if g.optimizer == "rmsprop":
    return torch_rmsprop(g.learning_rate)
  return optax.adam(g.learning_rate, b1=g.adam_b1, b2=g.adam_b2)


class ClassGAN:
  """The per-class WGAN of the config: networks, optimisers, one compiled chunk."""

  def __init__(self, c, mesh, writer: MetricWriter, inner_loop: str, dtype):
    g = c.gan
    size, channels = c.data.size, c.data.channels
    self.c, self.mesh, self.writer = c, mesh, writer
    self.generator = Generator(size=size, channels=channels, latent_dim=g.latent_dim,
                               max_channels=g.g_max_channels, min_channels=g.g_min_channels,
                               dtype=dtype)
    self.critic = Critic(size=size, base_channels=g.d_base_channels,
                         max_channels=g.d_max_channels, spectral_norm=g.spectral_norm,
                         dtype=dtype)
    self.g_tx, self.d_tx = gan_optimizer(g), gan_optimizer(g)
    critic_loss, generator_loss = wgan_losses(self.generator, self.critic, g.latent_dim,
                                              g.batch_size, g.loss, g.gp_weight)
    self.chunk = gan.build_gan_chunk(critic_loss, generator_loss, self.g_tx, self.d_tx,
                                     n_critic=g.n_critic, clip_value=g.clip_value,
                                     inner_loop=inner_loop, mesh=mesh)
    z = jnp.zeros((g.batch_size, g.latent_dim))
    x = jnp.zeros((g.batch_size, size, size, channels))
    self._init = compile_init(lambda k: (self.generator.init(k, z),
                                    self.critic.init(jax.random.fold_in(k, 1), x,
                                                     update_stats=True)))
    self._sample = jax.jit(lambda v, k: self.generator.apply(
        v, jax.random.normal(k, (g.batch_size, g.latent_dim)), train=True,
        mutable=["batch_stats"])[0])

  def init_state(self, seed: int) -> gan.GANState:
    g_vars, d_vars = self._init(jax.random.PRNGKey(seed))
    params = {"g": g_vars["params"], "d": d_vars["params"]}
    model_state = {"g": {"batch_stats": g_vars["batch_stats"]},
                   "d": {"batch_stats": d_vars.get("batch_stats", {})}}
    state = gan.GANState.create(params, model_state, self.g_tx, self.d_tx,
                                jax.random.PRNGKey(seed + 1))
    # Replicated on the mesh from the start, like the chunk's outputs (no second compile).
    return parallel.replicate(state, self.mesh)

  def train(self, images: np.ndarray, name: str, workdir: pathlib.Path, seed: int):
    g = self.c.gan
    calls = g.g_steps // g.steps_per_call
    ds = gan_batches(images, calls, g.steps_per_call, g.n_critic, g.batch_size, seed)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    ckpt = Checkpointer(workdir / "checkpoints" / name)
    try:
      result = run_loop(name, self.init_state(seed), self.chunk, it, total_calls=calls,
                        steps_per_call=g.steps_per_call, checkpointer=ckpt, writer=self.writer,
                        checkpoint_every=g.checkpoint_every,
                        prepare=lambda b: gan.shard_batches(b, self.mesh), loss_key="d_loss")
    finally:
      ckpt.close()
    return result

  def sample(self, state: gan.GANState, n: int, seed: int) -> np.ndarray:
    """n images in [0, 1]. BatchNorm uses the statistics of each sampling batch (the size
    of a training batch), as the generator ran in training."""
    variables = {"params": state.params["g"], **state.model_state["g"]}
    batches = [self._sample(variables, jax.random.fold_in(jax.random.PRNGKey(seed), i))
               for i in range(math.ceil(n / self.c.gan.batch_size))]
    return ((np.concatenate(jax.device_get(batches))[:n] + 1.0) / 2.0).clip(0, 1)


# --------------------------------------------------------------------------- synthetic sets
def check_pool_sizes(c, real: ImageSet) -> None:
  """Fails before any training when the largest synthetic count needs more images of a
  class than its pool will hold."""
  real_counts = real.counts()
  largest = max(tuple(c.synthetic.counts) + tuple(c.synthetic.mirror_counts))
  for k, n in class_counts(largest, real, c.synthetic.class_split).items():
    size = c.synthetic.samples_per_class * (2 if c.synthetic.flip_synth else 1)
    size += real_counts.get(k, 0) if c.synthetic.flip_real else 0
    if n > size:
      raise ConfigError(f"{largest} synthetic images need {n} of class {k} but "
                        f"the pool will hold {size}; raise config.synthetic.samples_per_class")


# --------------------------------------------------------------------------- classifiers
def epoch_order(n: int, epochs: int, batch_size: int, seed: int) -> np.ndarray:
  """[epochs * ceil(n / batch), batch] image indices: each epoch one fresh permutation of
  range(n) in ceil(n / batch) batches, the last batch filled up from the start of the same
  permutation (a full-size batch keeps one compiled step), a pure function of the seed."""
  steps_per_epoch = math.ceil(n / batch_size)
  rng = np.random.default_rng(seed)
  order = [np.resize(rng.permutation(n), steps_per_epoch * batch_size) for _ in range(epochs)]
  return np.concatenate(order).reshape(epochs * steps_per_epoch, batch_size)


def classifier_batches(data: ImageSet, steps: int, batch_size: int, seed: int):
  """[steps, batch, ...] over consecutive epochs (each a fresh permutation, see
  `epoch_order`)."""
  epochs = math.ceil(steps / math.ceil(len(data.labels) / batch_size))
  idx = epoch_order(len(data.labels), epochs, batch_size, seed)[:steps]
  return {"image": data.images[idx], "label": data.labels[idx]}


def call_length(steps_per_epoch: int, steps_per_call: int) -> int:
  """Steps per jitted call: the largest divisor of an epoch's steps not above
  `steps_per_call`, so that every epoch ends on a call and is evaluated there."""
  return max(d for d in range(1, min(steps_per_epoch, steps_per_call) + 1)
             if steps_per_epoch % d == 0)


class Classifiers:
  """One compiled training chunk and one compiled prediction per classifier (and call
  length). A classifier with a weights file in `config.pretrained` starts from it and sees
  its images as the ImageNet weights expect them (RGB, ImageNet mean and std)."""

  def __init__(self, c, mesh, inner_loop: str, dtype):
    from medda_jax.models.cnn_transformer import build_classifier
    self.c, self.mesh = c, mesh
    t = c.train
    self.tx = optax.adamw(t.learning_rate, weight_decay=t.weight_decay)
    self.models, self.chunks, self.predicts, self.inits = {}, {}, {}, {}
    self.weights = {name: c.pretrained.get(name, "") for name in c.classifiers}
    x = jnp.zeros((1, c.data.size, c.data.size, c.data.channels))
    for name in c.classifiers:
      model = build_classifier(name, num_classes=2, dtype=dtype,
                               **dict(c.classifier_overrides[name]))
      self.models[name] = model
      prepare = pretrained.imagenet_standardise if self.weights[name] else (lambda x: x)

      def loss_fn(params, model_state, batch, rng, model=model, prepare=prepare):
        variables = {"params": params, **model_state}
        kwargs = dict(train=True, rngs={"dropout": rng})
        images = prepare(batch["image"])
        if model_state:  # BatchNorm statistics (ResNet, hybrid); the ViT has none
          logits, model_state = model.apply(variables, images, mutable=list(model_state),
                                            **kwargs)
        else:
          logits = model.apply(variables, images, **kwargs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (model_state, {})

      # One chunk function; a call length of its own compiles on first use only.
      self.chunks[name] = build_train_chunk(loss_fn, self.tx, inner_loop, mesh=mesh)
      self.predicts[name] = batch_predictor(
          lambda v, images, model=model, prepare=prepare: jnp.argmax(
              model.apply(v, prepare(images), train=False), -1),
          c.engine.eval_batch_size, mesh)
      self.inits[name] = compile_init(lambda k, model=model: model.init(k, x, train=False))

  def initial_variables(self, name: str, seed: int) -> dict:
    """Fresh variables of classifier `name`, the backbone from its weights file if any."""
    variables = self.inits[name](jax.random.PRNGKey(seed))
    if self.weights[name]:
      variables = pretrained.load_pretrained(name, self.weights[name], variables,
                                             f"config.pretrained.{name}")
    return dict(variables)

  def predict(self, name: str, variables, data: ImageSet) -> np.ndarray:
    """Predicted labels of a set, in fixed-size batches."""
    return np.asarray(self.predicts[name](variables, data.images))

  def accuracy(self, name: str, variables, data: ImageSet) -> tuple[float, dict[int, float]]:
    """Accuracy (%) and per-class recall (%) on a set, predicted in fixed-size batches."""
    return accuracy_and_recall(self.predict(name, variables, data), data.labels)

  def train(self, name: str, data: ImageSet, val: ImageSet, seed: int,
            checkpoint_dir: pathlib.Path | None = None):
    """Trains for `train.epochs` epochs and returns the variables of the epoch with the
    best validation accuracy (evaluated after every epoch, as the paper selects its
    checkpoint; ties go to the later epoch), that accuracy and the number of evaluations.
    Checkpointed once per epoch in `checkpoint_dir` (None: not at all)."""
    t = self.c.train
    steps_per_epoch = math.ceil(len(data.labels) / t.batch_size)
    spc = call_length(steps_per_epoch, self.c.engine.steps_per_call)
    calls_per_epoch = steps_per_epoch // spc
    variables = self.initial_variables(name, seed)
    params = variables.pop("params")
    state = TrainState.create(params, self.tx, variables, jax.random.PRNGKey(seed + 1))
    idx = epoch_order(len(data.labels), t.epochs, t.batch_size, seed)

    def batch(k):  # gathered per call: the paper's sets do not fit in memory at once
      rows = idx[k * spc:(k + 1) * spc]
      return {"image": data.images[rows], "label": data.labels[rows]}

    result = fit(f"{name} (seed {seed})", state, self.chunks[name], batch,
                 total_calls=t.epochs * calls_per_epoch, steps_per_call=spc,
                 evaluate=lambda v: self.accuracy(name, v, val)[0], every=calls_per_epoch,
                 keep_ties=True,  # ties: the later, better-trained checkpoint
                 mesh=self.mesh, checkpoint_dir=checkpoint_dir,
                 checkpoint_every=calls_per_epoch)
    return result.best, result.best_score, result.evaluations


def accuracy_and_recall(predictions: np.ndarray, labels: np.ndarray
                        ) -> tuple[float, dict[int, float]]:
  """Accuracy (%) and recall (%) of every class present."""
  correct = np.asarray(predictions) == np.asarray(labels)
  recall = {int(k): float(100 * correct[labels == k].mean()) for k in np.unique(labels)}
  return float(100 * correct.mean()), recall


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  splits = load_splits(config)
  c = domain_names(config)  # results name every domain by its name, never by its path
  demo = c.data.source == "digits"
  user = [n for n, e in zip((c.data.source,) + tuple(c.data.targets),
                            (config.data.source,) + tuple(config.data.targets)) if n != e]
  if demo:
    label = ("DEMO DATA (real handwritten digits standing in for breast ultrasound) — not a "
             "reproduction of the paper's numbers")
  elif user:
    label = f"source {c.data.source}, targets {', '.join(c.data.targets)}"
  else:
    label = "breast ultrasound"
  inner_loop, dtype = cu.inner_loop(c), cu.compute_dtype(c)
  mesh = parallel.data_mesh()
  writer = MetricWriter(workdir)
  main = parallel.is_main_process()
  if main:
    print(f"data: {splits.description}\nclassifiers {list(c.classifiers)}; synthetic counts "
          f"{list(c.synthetic.counts)}; seeds {list(c.seeds)}; inner loop: {inner_loop}",
          file=sys.stderr)

  check_pool_sizes(c, splits.real_train)

  # Steps 2-3: one WGAN per class, then its samples (kept in synthetic.npz). Settings
  # without synthetic images (Table 1) train no GAN.
  synth_path = workdir / "synthetic.npz"
  needs_synthetic = max(tuple(c.synthetic.counts) + tuple(c.synthetic.mirror_counts)) > 0
  if not needs_synthetic:
    shape = (0,) + splits.gan_train.images.shape[1:]
    samples = {k: np.zeros(shape, np.float32) for k in (0, 1)}
  elif synth_path.exists():
    with np.load(synth_path) as f:
      samples = {k: f[f"class_{k}"] for k in (0, 1)}
  else:
    class_gan = ClassGAN(c, mesh, writer, inner_loop, dtype)
    samples, curves = {}, {}
    for k in (0, 1):
      images = splits.gan_train.images[splits.gan_train.labels == k]
      result = class_gan.train(images, f"wgan_class{k}", workdir, c.seed + k)
      curves[f"critic loss, {splits.class_names[k]}"] = result.curve
      samples[k] = class_gan.sample(result.state, c.synthetic.samples_per_class, c.seed + 100 + k)
    if main:
      with files.atomic_path(synth_path) as tmp:
        np.savez_compressed(tmp, class_0=samples[0], class_1=samples[1],
                            manifest=json.dumps({"class_names": splits.class_names,
                                                 "g_steps": c.gan.g_steps, "seed": c.seed,
                                                 "loss": c.gan.loss}))
      plots.learning_curves(workdir / "wgan_curves.png", curves, "WGAN critic loss per class")
  if main and needs_synthetic:
    for k, name in splits.class_names.items():
      real = splits.gan_train.images[splits.gan_train.labels == k]
      plots.sample_grid(workdir / f"samples_{name.replace(' ', '_')}.png", real, samples[k],
                        title=f"{name}: real (left) and WGAN samples (right)")

  # Steps 4-5: the ratio sweep (and Table 6's mirrored rows).
  pool = synthetic_pool(samples, splits.real_train, c.synthetic.flip_synth,
                        c.synthetic.flip_real)
  classifiers = Classifiers(c, mesh, inner_loop, dtype)
  table = RunTable(workdir / RESULTS_FILE)
  results = table.runs
  has_source_test = len(splits.source_test.labels) > 0
  runs = [(n, r, s) for n in c.classifiers for r in row_ids(c) for s in c.seeds]
  with Progress("ratio sweep (classifier x synthetic count x seed)", len(runs),
                sum(table.done(f"{n}/{r}/{s}") for n, r, s in runs)) as progress:
    for name, row, seed in runs:
      key = f"{name}/{row}/{seed}"
      if table.done(key):
        continue
      count, flips = parse_row(row)
      data = mixed_training_set(splits.real_train, pool, count, c.synthetic.class_split, seed)
      if flips:  # the whole training set doubled by its horizontal flips (Table 6)
        data = mirrored(data)
      ckpt_dir = workdir / "checkpoints" / "classifiers" / key.replace("/", "_")
      variables, val_acc, evaluations = classifiers.train(name, data, splits.real_val, seed,
                                                          ckpt_dir)
      predictions = {t: classifiers.predict(name, variables, d)
                     for t, d in splits.targets.items()}
      target_accs, target_recalls = {}, {}
      for t, data_t in splits.targets.items():
        target_accs[t], target_recalls[t] = accuracy_and_recall(predictions[t], data_t.labels)
      source_acc = source_recall = None  # no source test set: no in-domain accuracy
      record = {}
      if has_source_test:
        source_pred = classifiers.predict(name, variables, splits.source_test)
        source_acc, source_recall = accuracy_and_recall(source_pred, splits.source_test.labels)
        record["source_predictions"] = source_pred.tolist()
      record.update({"source": source_acc, "source_recall": source_recall,
                     "targets": target_accs, "target_recall": target_recalls,
                     "target_predictions": {t: p.tolist() for t, p in predictions.items()},
                     "val": val_acc, "evaluations": evaluations,
                     "train_images": int(len(data.labels))})
      table.record(key, record)
      shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
      shown = ({"source": source_acc} if has_source_test else {}) | target_accs
      writer.write("ratio", len(results), {f"{key}/{k}": a for k, a in shown.items()})
      progress.update(1, **shown)

  n_real = len(splits.real_train.labels)
  n_val = len(splits.real_val.labels)
  table = summarise(results, c, n_real)
  final = {}
  for name, rows in table.items():
    for row_id, row in rows.items():
      values = {f"source_acc/{name}/{row_id}": row["source"][0]}
      for t in c.data.targets:
        values[f"{t}_acc/{name}/{row_id}"] = row[t][0]
        values[f"gap/{t}/{name}/{row_id}"] = row[f"gap/{t}"][0]
      final.update({k: v for k, v in values.items() if not math.isnan(v)})
  if main:
    files.write_text(workdir / "results.md",
        tables_markdown(table, c, label, n_real, splits.class_names, n_val))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "data": splits.description,
         "counts": list(c.synthetic.counts), "mirror_counts": list(c.synthetic.mirror_counts),
         "seeds": list(c.seeds), "table": nan_to_none(table)}, indent=1))
    plots.ratio_figure(workdir / "ratio.png", by_synthetic_count(table), list(c.data.targets),
                       title="accuracy against synthetic images" + (" (demo data)" if demo
                                                                     else ""))
    writer.write("final", 0, final)
  writer.close()
  return final
