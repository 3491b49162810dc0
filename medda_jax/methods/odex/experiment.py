"""The ODEx experiment: config checks, the stream, training per stage (one compiled chunk for
every method: EWC's and LwF's terms enter with weights that are zero where unused), the
pool, evaluation after every stage, and the driver.

Resuming: every method/seed keeps one pool file (`pools/<method>_seed<s>.msgpack`: the
models' parameters, their statistics, EWC's anchor and Fisher, the stage index and the
rows of the Dice matrix so far), written atomically after each stage; a stage in progress
resumes from its own orbax checkpoint. A finished method/seed is a row of the run table.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import flax.serialization
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, metrics as metrics_lib
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk, epoch_indices
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods.odex import data as data_lib
from medda_jax.methods.odex import paper
from medda_jax.methods.odex.report import summarise, table_markdown
from medda_jax.models.unet3d import UNet3D

RESULTS_FILE = "odex_runs.json"
METHODS = ("odex", "sequential", "ewc", "lwf", "joint")


# --------------------------------------------------------------------------- config
def threshold_value(c):
  """None for the paper's automatic xi, else the number config.odex.threshold holds."""
  t = c.odex.threshold
  if isinstance(t, str):
    if t.strip().lower() == "auto":
      return None
    try:
      value = float(t)
      if not np.isfinite(value):
        raise ValueError(t)
      return value
    except ValueError:
      raise ConfigError(f"config.odex.threshold={t!r} is not a number; use a number (the "
                        "normalised distance above which the pool expands) or 'auto'") from None
  if isinstance(t, bool) or not isinstance(t, (int, float)):
    raise ConfigError(f"config.odex.threshold={t!r} is not a number; use a number or 'auto'")
  return float(t)


def validate(c: ml_collections.ConfigDict) -> None:
  cu.check_choice(c, "data.source", ("demo", "msd"))
  crop = tuple(c.data.crop)
  down = 2 ** (c.model.levels - 1)
  if len(crop) != 3 or any(not isinstance(n, int) or n < down or n % down for n in crop):
    raise ConfigError(f"config.data.crop={crop!r} must be three sizes divisible by "
                      f"{down} (the U-Net's poolings)")
  if not c.data.user:
    cu.check_range(c, "data.stages", 2, integer=True)
  cu.check_range(c, "data.train_subjects", 2, integer=True)
  cu.check_range(c, "data.test_subjects", 1, integer=True)
  cu.check_range(c, "data.test_fraction", 0.0, 0.9, low_inclusive=False)
  if not c.methods or any(m not in METHODS for m in c.methods):
    raise ConfigError(f"config.methods={tuple(c.methods)!r} must list some of {METHODS}")
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_range(c, "model.features", 1, 256, integer=True)
  cu.check_range(c, "model.levels", 1, 6, integer=True)
  cu.check_range(c, "train.steps", 1, integer=True)
  cu.check_range(c, "train.batch_size", 1, integer=True)
  cu.check_range(c, "train.learning_rate", 0.0, low_inclusive=False)
  cu.check_choice(c, "train.optimizer", ("sgd", "adam"))
  cu.check_range(c, "odex.rel_eps", 0.0, low_inclusive=False)
  cu.check_choice(c, "odex.routing", ("mean", "sum"))
  threshold_value(c)
  cu.check_range(c, "ewc.lam", 0.0)
  cu.check_range(c, "lwf.lam", 0.0)
  cu.check_range(c, "lwf.temperature", 0.0, low_inclusive=False)
  cu.validate_shared(c)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  if c.train.steps % c.engine.steps_per_call:
    raise ConfigError(f"config.engine.steps_per_call={c.engine.steps_per_call} must divide "
                      f"config.train.steps={c.train.steps}")


# --------------------------------------------------------------------------- pool files
def save_pool(path: pathlib.Path, pool: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_bytes(path, flax.serialization.msgpack_serialize(
      jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, pool)))


def load_pool(path: pathlib.Path) -> dict | None:
  if not path.exists():
    return None
  return flax.serialization.msgpack_restore(path.read_bytes())


def _listed(d) -> list:
  """msgpack keeps lists as lists; flax's state dicts turn them into {'0': ...}."""
  if isinstance(d, dict):
    return [d[str(i)] for i in range(len(d))]
  return list(d)


def members_to_tree(members: list[paper.Member]) -> list:
  return [{"means": [g.mean for g in m.history], "covs": [g.cov for g in m.history],
           "d_in": m.d_in, "stages": np.asarray(m.stages, np.int32)} for m in members]


def members_from_tree(tree, rel_eps: float) -> list[paper.Member]:
  out = []
  for m in _listed(tree):
    history = [paper.Gaussian(np.asarray(mu), np.asarray(cov), rel_eps)
               for mu, cov in zip(_listed(m["means"]), _listed(m["covs"]))]
    out.append(paper.Member(history, np.asarray(m["d_in"]), [int(s) for s in m["stages"]]))
  return out


# --------------------------------------------------------------------------- experiment
class Experiment:
  def __init__(self, c, workdir: pathlib.Path):
    self.c, self.workdir = c, workdir
    self.stages, self.label = data_lib.load_stream(c)
    if len(self.stages) < 2:
      raise ConfigError("a continual stream needs at least two stages; config.data.user "
                        f"names {len(self.stages)}")
    self.model = UNet3D(features=c.model.features, levels=c.model.levels,
                        dtype=cu.compute_dtype(c))
    self.writer = MetricWriter(workdir)
    example = jnp.zeros((1, *c.data.crop, 1))
    self._init = compile_init(lambda k: self.model.init(k, example))

    def forward(params, x):
      logits, inter = self.model.apply({"params": params}, x, mutable=["intermediates"])
      return logits, paper.features(inter["intermediates"]["norm1_input"][0])
    self._forward = batch_predictor(forward, c.engine.eval_batch_size)
    self._chunks: dict[int, object] = {}

    def sample_loss(params, x, y):
      return paper.segmentation_loss(self.model.apply({"params": params}, x[None]), y[None])
    grads = jax.vmap(jax.grad(sample_loss), in_axes=(None, 0, 0))
    self._fisher = jax.jit(lambda p, x, y: paper.fisher_diagonal(grads(p, x, y)))

  # ---- training
  def tx(self, steps: int):
    t = self.c.train
    if t.optimizer == "adam":
      return optax.adam(t.learning_rate)
    # nnU-Net: SGD Nesterov 0.99, lr x (1 - step / steps)^0.9, weight decay 3e-5
    schedule = optax.polynomial_schedule(t.learning_rate, 0.0, 0.9, steps)
    return optax.chain(optax.add_decayed_weights(t.weight_decay),
                       optax.sgd(schedule, momentum=t.momentum, nesterov=True))

  def loss(self, params, ms, batch, rng):
    del rng
    apply = lambda p: self.model.apply({"params": p}, batch["images"])  # noqa: E731
    logits = apply(params)
    seg = paper.segmentation_loss(logits, batch["masks"])
    ewc = paper.ewc_penalty(params, ms["anchor"], ms["fisher"], ms["ewc_lambda"])
    teacher = jax.lax.cond(ms["lwf_lambda"] > 0, lambda: apply(ms["teacher"]),
                           lambda: jnp.zeros_like(logits))
    lwf = ms["lwf_lambda"] * paper.lwf_distillation(
        logits, jax.lax.stop_gradient(teacher), self.c.lwf.temperature)
    return seg + ewc + lwf, (ms, {"seg": seg, "ewc": ewc, "lwf": lwf})

  def train(self, name: str, params, items, steps: int, seed: int, *, anchor=None,
            fisher=None, teacher=None):
    """`steps` updates of `params` on `items` (+ EWC when fisher is given, + LwF when a
    teacher is); resumes from the stage's checkpoint."""
    c = self.c
    zeros = jax.tree.map(jnp.zeros_like, params)
    ms = {"anchor": params if anchor is None else anchor,
          "fisher": zeros if fisher is None else fisher,
          "teacher": params if teacher is None else teacher,
          "ewc_lambda": jnp.float32(c.ewc.lam if fisher is not None else 0.0),
          "lwf_lambda": jnp.float32(c.lwf.lam if teacher is not None else 0.0)}
    tx = self.tx(steps)
    if steps not in self._chunks:
      self._chunks[steps] = build_train_chunk(self.loss, tx, cu.inner_loop(c))
    # own copies: the chunk donates the state, and anchor / teacher may be `params` itself
    ms = jax.tree.map(lambda x: jnp.array(x, copy=True), ms)
    state = TrainState.create(jax.tree.map(lambda x: jnp.array(x, copy=True), params), tx, ms)
    spc, bs = c.engine.steps_per_call, c.train.batch_size
    order = epoch_indices(len(items), steps, bs, seed)

    def chunk(k):
      rows = order[k * spc:(k + 1) * spc]
      batches = [data_lib.batch(items, r) for r in rows]
      return {key: np.stack([b[key] for b in batches]) for key in ("images", "masks")}
    ds = grain.MapDataset.range(steps // spc).map(chunk)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    calls = steps // spc
    ckpt_dir = self.workdir / "checkpoints" / name.replace("/", "_")
    # a stage no longer than one checkpoint period is simply redone after a kill
    ckpt = Checkpointer(ckpt_dir) if calls > c.engine.checkpoint_every else None
    try:
      result = run_loop(name, state, self._chunks[steps], it, total_calls=calls,
                        steps_per_call=spc, checkpointer=ckpt, writer=self.writer,
                        checkpoint_every=c.engine.checkpoint_every, show_progress=False)
    finally:
      if ckpt is not None:
        ckpt.close()
    return result.state.params, ckpt_dir

  def first_stage(self, seed: int, params):
    """The first stage is the same for every continual method (same initialisation and
    batches, no EWC / LwF term yet): trained once per seed and kept in its own file."""
    path = self.workdir / "pools" / f"first_seed{seed}.msgpack"
    saved = load_pool(path)
    if saved is not None:
      return jax.tree.map(jnp.asarray, saved["params"]), None
    trained, ckpt = self.train(f"first_seed{seed}/{self.stages[0].name}", params,
                               self.stages[0].train, self.c.train.steps, seed * 1000)
    save_pool(path, {"params": trained})
    return trained, ckpt

  # ---- features, prediction, Fisher
  def forward(self, params, items):
    """(probabilities > 0.5 masks [n, D, H, W], features [n, d]) of every item, read in
    evaluation batches."""
    preds, feats = [], []
    size = self.c.engine.eval_batch_size
    for start in range(0, len(items), size):
      b = data_lib.batch(items, range(start, min(start + size, len(items))))
      logits, z = self._forward(params, b["images"])
      preds.append(np.asarray(logits[..., 0]) > 0)
      feats.append(np.asarray(z))
    return np.concatenate(preds), np.concatenate(feats)

  def masks(self, items) -> np.ndarray:
    return np.stack([items.read(i)[1] for i in range(len(items))])

  def gaussian(self, feats) -> paper.Gaussian:
    g = paper.StreamingGaussian(feats.shape[1])
    for start in range(0, len(feats), self.c.engine.eval_batch_size):
      g.update(feats[start:start + self.c.engine.eval_batch_size])
    return paper.Gaussian(g.mean, g.cov, self.c.odex.rel_eps)

  def fisher(self, params, items):
    """Diagonal empirical Fisher on a stage's training items (batches of per-sample
    gradients, averaged weighting each batch by its size)."""
    total, n = None, 0
    size = self.c.engine.eval_batch_size
    for start in range(0, len(items), size):
      b = data_lib.batch(items, range(start, min(start + size, len(items))))
      f = self._fisher(params, b["images"], b["masks"])
      k = len(b["images"])
      total = jax.tree.map(lambda x: x * k, f) if total is None else jax.tree.map(
          lambda t, x: t + x * k, total, f)
      n += k
    return jax.tree.map(lambda t: t / n, total)

  # ---- evaluation
  def dice_row(self, params_list, members=None):
    """Per test stage: mean Dice of the routed (ODEx) or single model, and routing counts."""
    row, routing = [], []
    for stage in self.stages:
      gt = self.masks(stage.test)
      outs = [self.forward(p, stage.test) for p in params_list]
      if members is None:
        chosen = np.zeros(len(gt), int)
      else:
        chosen = paper.route(members, [z for _, z in outs],
                             per_stage=self.c.odex.routing == "mean")
      dice = [metrics_lib.dice_3d(outs[m][0][i], gt[i]) for i, m in enumerate(chosen)]
      row.append(float(np.mean(dice)))
      routing.append(np.bincount(chosen, minlength=len(params_list)).tolist())
    return row, routing

  # ---- one method over the stream
  def run_method(self, method: str, seed: int) -> dict:
    c, n = self.c, len(self.stages)
    tag = f"{method}_seed{seed}"
    pool_path = self.workdir / "pools" / f"{tag}.msgpack"
    pool = load_pool(pool_path)
    if pool is None:
      params = self._init(jax.random.PRNGKey(seed))["params"]
      pool = {"done": 0, "params": [params], "rows": [], "routing": [], "trained": [],
              "expanded": [], "scores": [], "members": [], "fisher": None, "anchor": None}
    params_list = [jax.tree.map(jnp.asarray, p) for p in _listed(pool["params"])]
    members = members_from_tree(pool["members"] or [], c.odex.rel_eps)
    fisher = pool["fisher"]
    rows, routing = [list(r) for r in _listed(pool["rows"])], _listed(pool["routing"])
    log = {k: _listed(pool[k]) for k in ("trained", "expanded", "scores")}
    steps = c.train.steps
    if method == "joint":  # one model on the union of all stages' training data
      if int(pool["done"]) < n:
        union = _Union([s.train for s in self.stages])
        trained, ckpt = self.train(f"{tag}/all", params_list[0], union, steps * n,
                                   seed * 1000 + 7)
        row, rt = self.dice_row([trained])
        pool = {"done": n, "params": [trained], "rows": [row], "routing": [rt],
                "trained": [], "expanded": [], "scores": [], "members": [], "fisher": None,
                "anchor": None}
        save_pool(pool_path, pool)
        shutil.rmtree(ckpt, ignore_errors=True)
      row = list(_listed(load_pool(pool_path)["rows"])[0])
      return {"final": row, "pool_size": 1}
    for k in range(int(pool["done"]), n):
      stage = self.stages[k]
      name, sseed = f"{tag}/{stage.name}", seed * 1000 + k
      anchor = teacher = None
      if method == "odex":
        if k == 0:
          target, expand, scores = 0, False, None
        else:
          sel = paper.select(members, [self.forward(p, stage.train)[1] for p in params_list],
                             threshold_value(c))
          target, expand = sel.model, sel.expand
          scores = {"normalised": list(sel.scores), "raw": list(sel.raw),
                    "threshold": sel.threshold, "chosen": sel.model}
          print(f"{name}: closest model {sel.model} (normalised score {sel.score:.3f}, "
                f"threshold {sel.threshold:.3f}) -> "
                f"{'expand' if expand else 'train it'}", file=sys.stderr)
        start = params_list[target]
        history = list(members[target].history) if members else []
        stages_of = list(members[target].stages) if members else []
        if k == 0:
          trained, ckpt = self.first_stage(seed, start)
        else:
          trained, ckpt = self.train(name, start, stage.train, steps, sseed)
        feats = self.forward(trained, stage.train)[1]
        history.append(self.gaussian(feats))
        member = paper.Member(history, paper.summed_distance(history, feats),
                              stages_of + [k])
        if k == 0 or not expand:
          params_list[target] = trained
          if members:
            members[target] = member
          else:
            members = [member]
        else:
          params_list.append(trained)
          members.append(member)
          target = len(params_list) - 1
        log["trained"].append(target)
        log["expanded"].append(bool(expand))
        log["scores"].append(json.dumps(scores))
        row, rt = self.dice_row(params_list, members)
      else:
        if method == "ewc" and k > 0:
          anchor = params_list[0]
        if method == "lwf" and k > 0:
          teacher = params_list[0]
        if k == 0:
          trained, ckpt = self.first_stage(seed, params_list[0])
        else:
          trained, ckpt = self.train(name, params_list[0], stage.train, steps, sseed,
                                     anchor=anchor, fisher=fisher, teacher=teacher)
        params_list[0] = trained
        if method == "ewc":  # online EWC: the Fishers of the stages add up
          f = self.fisher(trained, stage.train)
          fisher = f if fisher is None else jax.tree.map(jnp.add, fisher, f)
        row, rt = self.dice_row(params_list)
      rows.append(row)
      routing.append(rt)
      self.writer.write(name, k, {f"dice/{s.name}": v for s, v in zip(self.stages, row)})
      save_pool(pool_path, {"done": k + 1, "params": params_list, "rows": rows,
                            "routing": routing, **log, "members": members_to_tree(members),
                            "fisher": fisher, "anchor": None})
      if ckpt is not None:
        shutil.rmtree(ckpt, ignore_errors=True)
    r = np.array(rows)
    return {"matrix": r.tolist(), "final": r[-1].tolist(), "dice": float(r[-1].mean()),
            "bwt": paper.bwt(r), "fwt": paper.fwt(r), "pool_size": len(params_list),
            "routing": [list(map(list, x)) for x in routing], **log}


class _Union:
  def __init__(self, parts):
    self.parts = parts
    self.index = [(p, i) for p, part in enumerate(parts) for i in range(len(part))]

  def __len__(self):
    return len(self.index)

  def read(self, i):
    p, j = self.index[i]
    return self.parts[p].read(j)


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  print(f"data: {exp.label}\nstages {[s.name for s in exp.stages]} "
        f"(train {[len(s.train) for s in exp.stages]}, test "
        f"{[len(s.test) for s in exp.stages]}); methods {list(c.methods)}; seeds "
        f"{list(c.seeds)}", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  for method in c.methods:
    for seed in c.seeds:
      key = f"{method}/{seed}"
      if not runs.done(key):
        runs.record(key, exp.run_method(method, seed))
  names = [s.name for s in exp.stages]
  table = summarise(runs.runs, c.methods, c.seeds)
  files.write_text(workdir / "results.md", table_markdown(table, runs.runs, c, names,
                                                         exp.label))
  files.write_text(workdir / "results.json", json.dumps(
      {"label": exp.label, "variant": c.variant, "stages": names, "seeds": list(c.seeds),
       "table": table}, indent=1))
  if "odex" in c.methods:
    from medda_jax.methods.odex import figures
    figures.pool_figure(workdir / "odex_pool.png", runs.get(f"odex/{c.seeds[0]}"), names,
                        "ODEx pool and test routing" + (
                            " (demo data)" if "DEMO" in exp.label else ""))
  final = {f"{m}/{k}": v[0] for m, row in table.items() for k, v in row.items()
           if v is not None}
  exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
