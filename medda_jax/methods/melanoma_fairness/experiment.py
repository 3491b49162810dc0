"""The fair-melanoma experiment: config checks, domains and splits, skin-type labels (human or
ITA), training every (method, seed) with its update rule, per-group and out-of-distribution
AUC, and the driver.

Splits (the paper's Fitzpatrick17k protocol, general): the training domain's images whose
skin type is in `data.train_types` are split into training and a held-out part
(`data.test_fraction`, stratified by label); the test set is that held-out part plus every
image of the other types. AUC is reported on the held-out part, per group of types
(`eval.groups`), as the gap between the first and last group, and on each whole
out-of-distribution domain (`data.ood`).
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
from medda_jax.data import images as images_lib
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init, compile_step
from medda_jax.engine.loop import run_loop
from medda_jax.engine.meta import all_finite, run_steps
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.melanoma_fairness import data as data_lib
from medda_jax.methods.melanoma_fairness import ita as ita_lib
from medda_jax.methods.melanoma_fairness import paper, report

RESULTS_FILE = "melanoma_runs.json"
ITA_FILE = "ita_labels.json"
SOURCES = ("fitzpatrick17k", "isic", "demo", "none")


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", SOURCES)
  user = dict(images_lib.parse_domain(e) for e in c.data.user)
  if any(p is None for p in user.values()):
    raise ConfigError("config.data.user entries must be name=path (a CSV or class-folder root)")
  if c.data.source == "fitzpatrick17k" and not c.data.root and c.data.train not in user:
    raise ConfigError("config.data.root must name the Fitzpatrick17k folder (fitzpatrick17k.csv "
                      "+ images/) when config.data.source='fitzpatrick17k'")
  if c.data.source == "isic" and not (c.data.isic2020 or c.data.isic2017) \
      and c.data.train not in user:
    raise ConfigError("config.data.isic2020 and/or config.data.isic2017 must name the ISIC "
                      "folders when config.data.source='isic'")
  if c.data.source == "none" and c.data.train not in user:
    raise ConfigError("config.data.source='none' needs config.data.train to name one of the "
                      f"config.data.user domains ({sorted(user) or 'none given'})")
  if not c.methods:
    raise ConfigError("config.methods must list at least one method")
  cu.check_subset(c, "methods", paper.METHODS)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "data.image_size", 16, 1024, integer=True)
  cu.check_range(c, "data.test_fraction", 0.0, 0.9, low_inclusive=False)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  for t in c.data.train_types:
    if t not in range(1, 7):
      raise ConfigError(f"config.data.train_types={tuple(c.data.train_types)} must be skin "
                        "types 1-6 (empty: all)")
  if not c.eval.groups:
    raise ConfigError("config.eval.groups must list at least one group of skin types")
  for g in c.eval.groups:
    if not g or any(t not in range(1, 7) for t in g):
      raise ConfigError(f"config.eval.groups entry {tuple(g)} must be skin types 1-6")
  cu.check_choice(c, "bias.labels", ("human", "ita"))
  cu.check_choice(c, "eval.skin", ("human", "ita"))
  cu.check_choice(c, "model.arch", ("resnext101_32x8d", "resnet"))
  cu.check_range(c, "model.width", 1, 512, integer=True)
  if not c.model.stages or any(not isinstance(s, int) or s < 1 for s in c.model.stages):
    raise ConfigError(f"config.model.stages={tuple(c.model.stages)} must be positive integers")
  for field in ("train.epochs", "train.batch_size"):
    cu.check_range(c, field, 1, integer=True)
  for field in ("optim.main_lr", "optim.lntl_bias_lr", "optim.tabe_bias_lr",
                "optim.confusion_lr", "optim.lr_scale"):
    cu.check_range(c, field, 0.0, low_inclusive=False)
  cu.check_range(c, "optim.momentum", 0.0, 0.999999)
  for field in ("debias.lntl_lambda", "debias.tabe_alpha", "debias.grl_scale"):
    cu.check_range(c, field, 0.0)
  cu.check_choice(c, "debias.confusion_target", paper.CONFUSION_TARGETS)
  thresholds = tuple(c.ita.thresholds)
  for k in range(len(thresholds)):
    if isinstance(thresholds[k], bool) or not isinstance(thresholds[k], (int, float)):
      raise ConfigError(f"config.ita.thresholds={thresholds!r}: entry {thresholds[k]!r} is not "
                        "a number")
  if len(thresholds) != 5 or list(thresholds) != sorted(thresholds, reverse=True):
    raise ConfigError(f"config.ita.thresholds={thresholds!r} must be five decreasing ITA "
                      "bounds in degrees (types 1|2|3|4|5|6)")
  cu.validate_shared(c)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  if c.model.init_from and not pathlib.Path(c.model.init_from).is_file():
    raise ConfigError(f"config.model.init_from={c.model.init_from!r} is not a file (a "
                      "torchvision state_dict saved as .npz)")


# --------------------------------------------------------------------------- data
def load_domains(c, workdir: pathlib.Path) -> tuple[data_lib.Domain, list[data_lib.Domain], str]:
  """(training domain, out-of-distribution domains, label of the data)."""
  user = dict(images_lib.parse_domain(e) for e in c.data.user)
  cache = files.data_cache_dir(c.data.cache_dir, workdir)
  builtin: dict[str, data_lib.Domain] = {}
  label = ""
  if c.data.source == "demo":
    for name, counts, seed, lighting, hairs in demo_domains(c):
      manifest = data_lib.make_demo_domain(cache / "demo_skin", name, counts,
                                           c.data.demo_side, seed, hairs, lighting)
      builtin[name] = data_lib.load_user(name, manifest)
    label = data_lib.DEMO_LABEL
  elif c.data.source == "fitzpatrick17k" and c.data.root:
    builtin["fitzpatrick17k"] = data_lib.load_fitzpatrick17k(c.data.root)
    label = "Fitzpatrick17k"
  elif c.data.source == "isic" and (c.data.isic2020 or c.data.isic2017):
    parts = ([data_lib.load_isic2020(c.data.isic2020)] if c.data.isic2020 else []) + (
        [data_lib.load_isic2017(c.data.isic2017)] if c.data.isic2017 else [])
    builtin["isic"] = data_lib.Domain(
        "isic", sum((p.paths for p in parts), ()), np.concatenate([p.labels for p in parts]),
        np.concatenate([p.skin for p in parts]))
    label = "ISIC " + " + ".join(n for n, v in (("2020", c.data.isic2020),
                                                 ("2017", c.data.isic2017)) if v)
  domains = dict(builtin)
  for name, path in user.items():
    domains[name] = data_lib.load_user(name, path)
  train_name = c.data.train or (next(iter(builtin)) if builtin else "")
  for name in [train_name, *c.data.ood]:
    if name not in domains:
      raise ConfigError(f"domain {name!r} (config.data.train / config.data.ood) is not in the "
                        f"data; available: {sorted(domains)}")
  users = [n for n in [train_name, *c.data.ood] if n in user]
  if users:
    label = "; ".join(x for x in (label if any(n in builtin for n in [train_name, *c.data.ood])
                                  else "", "your domains: " + ", ".join(users)) if x)
  return domains[train_name], [domains[n] for n in c.data.ood], label


def demo_domains(c):
  """(name, {(type, malignant): count}, seed, lighting range, hairs) of the demo's domains:
  a training domain whose types 1-2 tie the label to skin tone (malignant mostly on type 1,
  benign mostly on type 2) and whose types 3-6 are balanced, and a dimmer, hairier
  out-of-distribution domain."""
  n, few = c.data.demo_per_cell, max(1, c.data.demo_per_cell // 8)
  train = {(1, 1): n, (1, 0): few, (2, 1): few, (2, 0): n}
  train.update({(t, m): n // 2 for t in range(3, 7) for m in (0, 1)})
  ood = {(t, m): max(2, n // 4) for t in range(1, 7) for m in (0, 1)}
  return (("demo_skin", train, 0, (0.85, 1.1), 3), ("demo_dim", ood, 1, (0.7, 0.95), 6))


def ita_labels(domains: list[data_lib.Domain], workdir: pathlib.Path, c) -> dict[str, float]:
  """{path: ITA} of every image of `domains` (NaN: failed), kept in the workdir for reruns."""
  path = workdir / ITA_FILE
  known = json.loads(path.read_text()) if path.exists() else {}
  todo = sorted({p for d in domains for p in d.paths} - set(known))
  if todo:
    print(f"ITA labelling {len(todo)} images", file=sys.stderr)
    values, _ = ita_lib.label_files(todo, hair_removal=c.ita.hair_removal)
    known.update({p: (None if np.isnan(v) else float(v)) for p, v in zip(todo, values)})
    files.write_text(path, json.dumps(known))
  return {p: (np.nan if v is None else v) for p, v in known.items()}


def types_of(domain: data_lib.Domain, source: str, itas: dict, thresholds) -> np.ndarray:
  if source == "human":
    return domain.skin
  return ita_lib.fitzpatrick_type(np.array([itas[p] for p in domain.paths]), thresholds)


@dataclasses.dataclass(frozen=True)
class Split:
  train: data_lib.Domain
  bias: np.ndarray  # int32 [N_train], bias-head class (-1 none)
  classes: int
  test: data_lib.Domain
  test_types: np.ndarray  # skin type of each test image (eval.skin)


def make_split(domain: data_lib.Domain, c, itas: dict) -> Split:
  thresholds = tuple(c.ita.thresholds)
  group_types = types_of(domain, c.eval.skin, itas, thresholds)
  bias_types = types_of(domain, c.bias.labels, itas, thresholds)
  if c.eval.skin == "human" and np.all(group_types < 0):
    raise DataError(f"domain {domain.name} has no human skin types (a fitzpatrick column); "
                    "set config.eval.skin='ita'")
  if c.bias.labels == "human" and np.all(bias_types < 0):
    raise DataError(f"domain {domain.name} has no human skin types (a fitzpatrick column); "
                    "set config.bias.labels='ita'")
  kept = tuple(c.data.train_types) or tuple(range(1, 7))
  in_train_types = np.isin(group_types, kept)
  rng = np.random.default_rng(c.data.split_seed)
  held = np.zeros(len(domain), bool)
  for label in (0, 1):
    idx = np.flatnonzero(in_train_types & (domain.labels == label))
    held[rng.permutation(idx)[:int(round(len(idx) * c.data.test_fraction))]] = True
  classes = sorted(kept) if c.bias.labels == "human" and c.data.train_types else list(range(1, 7))
  to_class = {t: i for i, t in enumerate(classes)}
  bias = np.array([to_class.get(int(t), -1) for t in bias_types], np.int32)
  train_idx = np.flatnonzero(in_train_types & ~held & (bias >= 0))  # no skin type: not trained
  test_idx = np.flatnonzero(held | (~in_train_types & (group_types > 0)))
  if len(train_idx) < c.train.batch_size:
    raise DataError(f"domain {domain.name}: {len(train_idx)} training images of types {kept}, "
                    f"fewer than one batch of config.train.batch_size={c.train.batch_size}")
  if len(np.unique(domain.labels[train_idx])) < 2:
    raise DataError(f"domain {domain.name}: the training images hold one class only")
  return Split(domain.subset(train_idx), bias[train_idx], len(classes),
               domain.subset(test_idx), group_types[test_idx])


# --------------------------------------------------------------------------- training
class TrainBatches:
  """Mini-batches as a pure function of (seed, step): a fresh permutation each epoch
  (the last partial batch dropped), images read from their files."""

  def __init__(self, split: Split, batch_size: int, size: int, seed: int):
    self.split, self.batch_size, self.size, self.seed = split, batch_size, size, seed
    self.steps_per_epoch = max(1, len(split.train) // batch_size)

  def indices(self, step: int) -> np.ndarray:
    epoch, j = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self.seed, epoch, 29]).permutation(len(self.split.train))
    return order[j * self.batch_size:(j + 1) * self.batch_size]

  def batch(self, step: int) -> dict:
    idx = self.indices(step)
    train = self.split.train
    return {"images": data_lib.read_batch([train.paths[i] for i in idx], self.size),
            "labels": train.labels[idx], "bias": self.split.bias[idx]}

  def dataset(self, calls: int, steps_per_call: int) -> grain.MapDataset:
    def chunk(k):
      batches = [self.batch(k * steps_per_call + i) for i in range(steps_per_call)]
      return {key: np.stack([b[key] for b in batches]) for key in batches[0]}
    return grain.MapDataset.range(calls).map(chunk)


class Experiment:
  def __init__(self, c, workdir: pathlib.Path, split: Split):
    self.c, self.workdir, self.split = c, workdir, split
    self.net = paper.build_network(c.model.arch, c.model.stages, c.model.width, split.classes,
                                   cu.compute_dtype(c))
    self.weights = paper.class_weights(split.bias, split.classes)
    self.writer = MetricWriter(workdir)
    self._init = compile_init(lambda k: self.net.init(k, c.data.image_size))
    self._chunks: dict = {}

    def predict(variables, x):
      z, _ = self.net.features(variables["f"], variables["batch_stats"], x, train=False)
      return jax.nn.sigmoid(self.net.melanoma_logit(variables["g"], z))
    self._predict = jax.jit(predict)

  def hyper(self, method: str) -> paper.Hyper:
    o, d = self.c.optim, self.c.debias
    s = o.lr_scale
    return paper.hyper_for(method, o.main_lr * s, o.lntl_bias_lr * s, o.tabe_bias_lr * s,
                           o.confusion_lr * s, momentum=o.momentum, lntl_lambda=d.lntl_lambda,
                           tabe_alpha=d.tabe_alpha, grl_scale=d.grl_scale,
                           confusion_target=d.confusion_target,
                           legacy_encoder_bias_step=d.legacy_encoder_bias_step)

  def chunk(self, method: str):
    if method not in self._chunks:
      step = paper.update_rule(method, self.net, self.hyper(method), self.weights)
      inner = cu.inner_loop(self.c)

      def chunk(state, batches):
        state, metrics = run_steps(step, state, batches, inner)
        finite = all_finite((metrics, state.params))
        return state, dict(jax.tree.map(jnp.mean, metrics), finite=finite)
      self._chunks[method] = compile_step(chunk)
    return self._chunks[method]

  def initial_state(self, method: str, seed: int) -> paper.FairState:
    params, stats = self._init(jax.random.PRNGKey(seed))
    if self.c.model.init_from:
      from medda_jax.models import resnet
      try:
        loaded = resnet.load_torchvision_resnet(self.c.model.init_from,
                                                {"params": params["f"], "batch_stats": stats},
                                                skip_head=True)
      except ValueError as e:
        raise DataError(str(e)) from None
      params = dict(params, f=loaded["params"])
      stats = loaded["batch_stats"]
    return paper.FairState.create(params, stats, paper.optimizers(self.hyper(method)),
                                  jax.random.PRNGKey(seed + 10_000))

  def train(self, method: str, seed: int):
    c = self.c
    spc = c.engine.steps_per_call
    stream = TrainBatches(self.split, c.train.batch_size, c.data.image_size, seed)
    calls = -(-c.train.epochs * stream.steps_per_epoch // spc)  # whole epochs, rounded up
    name = f"{method}_seed{seed}"
    ckpt = Checkpointer(self.workdir / "checkpoints" / name)
    it = iter(stream.dataset(calls, spc).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
    try:
      result = run_loop(f"{method}/{seed}", self.initial_state(method, seed), self.chunk(method),
                        it, total_calls=calls, steps_per_call=spc, checkpointer=ckpt,
                        writer=self.writer, checkpoint_every=c.engine.checkpoint_every,
                        description=f"{paper.TITLES[method]} (seed {seed})")
    finally:
      ckpt.close()
    return result.state

  def scores(self, state: paper.FairState, domain: data_lib.Domain) -> np.ndarray:
    """sigmoid(g(f(x))), dropout off, BatchNorm running statistics; files read per batch
    (the last batch padded so one compiled shape serves all)."""
    variables = {"f": state.params["f"], "g": state.params["g"],
                 "batch_stats": state.batch_stats}
    bs, out = self.c.engine.eval_batch_size, []
    for start in range(0, len(domain), bs):
      x = data_lib.read_batch(domain.paths[start:start + bs], self.c.data.image_size)
      n = len(x)
      x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)]) if n < bs else x
      out.append(np.asarray(self._predict(variables, jnp.asarray(x)))[:n])
    return np.concatenate(out) if out else np.zeros(0)

  def evaluate(self, state, ood: list[data_lib.Domain]) -> dict:
    split, c = self.split, self.c
    result = group_aucs(split.test.labels, self.scores(state, split.test), split.test_types,
                        c.eval.groups, tuple(c.data.train_types) or tuple(range(1, 7)))
    result["ood"] = {d.name: metrics_lib.roc_auc(d.labels, self.scores(state, d)) for d in ood}
    return result


def group_aucs(labels, scores, types, groups, train_types) -> dict:
  """AUC on the test images of the training types ("held_out") and per group of types
  (NaN where a group is empty or holds one class)."""
  def auc(inside):
    return metrics_lib.roc_auc(labels[inside], scores[inside]) if inside.any() else float("nan")
  return {"held_out": auc(np.isin(types, train_types)),
          "groups": {report.group_name(g): auc(np.isin(types, g)) for g in groups}}


# --------------------------------------------------------------------------- driver
def labeller_table(domains: list[data_lib.Domain], c, itas: dict, workdir: pathlib.Path
                   ) -> list[dict] | None:
  """The ITA labeller against the human types (images that have one), with and without
  hair removal; None when no image has a human type."""
  paths = [p for d in domains for p, t in zip(d.paths, d.skin) if t > 0]
  human = np.concatenate([d.skin[d.skin > 0] for d in domains]) if paths else np.zeros(0)
  if not len(paths):
    return None
  path = workdir / "ita_labels_no_hair_removal.json"
  if path.exists():
    raw = json.loads(path.read_text())
    no_removal = np.array([np.nan if raw[p] is None else raw[p] for p in paths])
  else:
    no_removal, _ = ita_lib.label_files(paths, hair_removal=False)
    files.write_text(path, json.dumps({p: (None if np.isnan(v) else float(v))
                                       for p, v in zip(paths, no_removal)}))
  rows = []
  for title, values in (("hair removal (paper)", np.array([itas[p] for p in paths])),
                        ("no hair removal", no_removal)):
    pred = ita_lib.fitzpatrick_type(values, tuple(c.ita.thresholds))
    ok = pred > 0
    rows.append({"labeller": title, "images": len(paths), "failed": int((~ok).sum()),
                 "exact": float(np.mean(pred[ok] == human[ok]) * 100),
                 "within_1": float(np.mean(np.abs(pred[ok] - human[ok]) <= 1) * 100),
                 "confusion": [[int(np.sum((human == h) & (pred == p))) for p in range(1, 7)]
                               for h in range(1, 7)]})
  return rows


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_domain, ood, label = load_domains(c, workdir)
  needs_ita = "ita" in (c.bias.labels, c.eval.skin) or c.data.source == "demo"
  itas = ita_labels([train_domain, *ood], workdir, c) if needs_ita else {}
  split = make_split(train_domain, c, itas)
  init = (f"encoder initialised from {pathlib.Path(c.model.init_from).name}"
          if c.model.init_from else "random initialisation (no ImageNet weights)")
  print(f"data: {label}; train {train_domain.name}: {len(split.train)} images "
        f"({int(split.train.labels.sum())} malignant), test {len(split.test)}; OOD "
        f"{[d.name for d in ood]}; bias head {split.classes} classes ({c.bias.labels} labels); "
        f"{init}", file=sys.stderr)
  exp = Experiment(c, workdir, split)
  runs = RunTable(workdir / RESULTS_FILE)
  for seed in c.seeds:
    for method in c.methods:
      key = f"{method}/{seed}"
      if runs.done(key):
        continue
      state = exp.train(method, seed)
      runs.record(key, exp.evaluate(state, ood))
      shutil.rmtree(workdir / "checkpoints" / f"{method}_seed{seed}", ignore_errors=True)

  table = report.summarise(runs.runs, c)
  labeller = None
  if needs_ita:
    labeller = labeller_table([train_domain, *ood], c, itas, workdir)
  info = {"label": label, "init": init, "train_domain": train_domain.name,
          "train_images": len(split.train), "bias_classes": split.classes,
          "bias_labels": c.bias.labels, "groups_by": c.eval.skin,
          "train_types": list(c.data.train_types), "ood": [d.name for d in ood],
          "variant": c.variant, "seeds": list(c.seeds), "methods": list(c.methods)}
  files.write_text(workdir / "results.md", report.table_markdown(table, labeller, info, c))
  files.write_text(workdir / "results.json", json.dumps(
      dict(info, table=table, labeller=labeller), indent=1))
  from medda_jax.methods.melanoma_fairness import figures
  figures.group_auc_figure(workdir / "group_auc.png", table, c,
                           title="Per-group AUC" + (" (demo data)" if "DEMO" in label else ""))
  final = {f"auc/{m}/{col}": cell[0] for m, row in table.items() for col, cell in row.items()}
  exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
