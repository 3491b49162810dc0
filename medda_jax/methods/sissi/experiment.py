"""The SISSI experiment: config checks, data, the per-pipeline runs (mixed-batch training,
the start of label correction, TTA + WBF pseudo-labels, synthetic-like images), evaluation
and the driver.

A run is one (pipeline, seed). Its state after every epoch (but the last, whose result is
recorded at once) is checkpointed together with
the epoch, the AP50 and source-loss curves, the start epoch and the version (= epoch) of
the pseudo-labels in use; the pseudo-labels themselves are written per version beside the
checkpoints, and the synthetic-like images are rebuilt from them, so a killed run resumes
at its last finished epoch with the same labels and images.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import grain
import jax
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files
from medda_jax.engine import workdir as workdir_lib
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, NonFiniteLossError
from medda_jax.data.images import parse_domain
from medda_jax.methods.sissi import data as data_lib
from medda_jax.methods.sissi import paper
from medda_jax.methods.sissi.detector import Detector, targets
from medda_jax.methods.sissi.report import PIPELINES, label_of, summarise, table_markdown

RESULTS_FILE = "sissi_runs.json"
STARTS = ("never", "adele", "source_loss")
BLURS = ("none", "weak", "strong")


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", ("demo", "cellpose"))
  cu.check_choice(c, "data.target", ("demo", "user"))
  if c.data.source == "cellpose" and not c.data.cellpose_root:
    raise ConfigError("config.data.cellpose_root must name the Cellpose folder (train/ and "
                      "test/ with XXX_img.png + XXX_masks.png) when config.data.source="
                      "'cellpose'")
  if c.data.target == "user":
    if len(c.data.user) != 1:
      raise ConfigError("config.data.user must be one 'name=manifest' (CSV image,x1,y1,x2,y2 "
                        "or COCO JSON) of the noisy-labelled target images when "
                        "config.data.target='user'")
    name, path = parse_domain(c.data.user[0])
    if path is None:
      raise ConfigError(f"config.data.user={c.data.user[0]!r} must be 'name=path'")
    if not c.data.user_test:
      raise ConfigError("config.data.user_test must list at least one 'reader=manifest' of "
                        "reference boxes for the target test images")
    for entry in c.data.user_test:
      if parse_domain(entry)[1] is None:
        raise ConfigError(f"config.data.user_test entry {entry!r} must be 'reader=path'")
  cu.check_range(c, "data.size", 32, 2048, integer=True)
  if c.data.size % 32:
    raise ConfigError(f"config.data.size={c.data.size} must be divisible by 32 (the "
                      "detector's coarsest stride)")
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  cu.check_subset(c, "sissi.pipelines", PIPELINES)
  cu.check_range(c, "train.epochs", 2, integer=True)
  cu.check_range(c, "train.batch_size", 2, integer=True)
  if c.train.batch_size % 2:
    raise ConfigError(f"config.train.batch_size={c.train.batch_size} must be even (half "
                      "target, half source: the mixed batch)")
  cu.check_range(c, "train.learning_rate", 0.0, low_inclusive=False)
  cu.check_choice(c, "train.optimizer", ("sgd", "adam"))
  cu.check_range(c, "train.momentum", 0.0, 0.999999)
  cu.check_range(c, "train.weight_decay", 0.0)
  cu.check_range(c, "train.lr_step_epochs", 1, integer=True)
  cu.check_range(c, "train.lr_gamma", 0.0, 1.0, low_inclusive=False)
  cu.check_range(c, "model.width", 1, 256, integer=True)
  cu.check_range(c, "model.fpn_features", 1, 1024, integer=True)
  if len(c.model.stage_sizes) != 4 or min(c.model.stage_sizes) < 1:
    raise ConfigError(f"config.model.stage_sizes={tuple(c.model.stage_sizes)!r} must be four "
                      "positive block counts")
  cu.check_range(c, "detect.score_min", 0.0, 1.0)
  cu.check_range(c, "detect.nms_iou", 0.0, 1.0)
  cu.check_range(c, "detect.max_dets", 1, integer=True)
  cu.check_range(c, "sissi.pseudo_score", 0.0, 1.0)
  cu.check_range(c, "sissi.wbf_iou", 0.0, 1.0)
  cu.check_range(c, "sissi.adele_threshold", 0.0, 1.0)
  cu.check_range(c, "sissi.adele_min_increment", 0.0, 1.0)
  if not c.sissi.tta_scales or min(c.sissi.tta_scales) <= 0:
    raise ConfigError("config.sissi.tta_scales must list positive scales")
  bad = [f for f in c.sissi.tta_flips if f not in ("none", "h", "v", "hv")]
  if bad or not c.sissi.tta_flips:
    raise ConfigError(f"config.sissi.tta_flips must list flips from none, h, v, hv; got {bad}")
  for blur in ("weak", "strong"):
    k = c.sissi[f"blur_{blur}"]
    if len(k) != 2 or int(k[0]) % 2 == 0 or k[0] < 1 or k[1] < 0:
      raise ConfigError(f"config.sissi.blur_{blur}={tuple(k)!r} must be (odd kernel size, "
                        "sigma >= 0) (OpenCV GaussianBlur)")
  cu.check_range(c, "sissi.force_start", 0, integer=True)
  cu.check_range(c, "data.demo_rows", 1, integer=True)
  cu.check_range(c, "data.demo_source_images", 1, integer=True)
  cu.validate_shared(c)


# --------------------------------------------------------------------------- pipelines
def pipeline_settings(name: str) -> tuple[str, str]:
  """(start, blur) of a pipeline of the paper's Table 1."""
  return {"baseline": ("never", "none"), "sissi_w": ("source_loss", "weak"),
          "sissi_s": ("source_loss", "strong"), "plain_a": ("adele", "none"),
          "a_sissi_w": ("adele", "weak"), "a_sissi_s": ("adele", "strong")}[name]


# --------------------------------------------------------------------------- data
class Data:
  """Target train (noisy boxes), target test per reader, source train and validation."""

  def __init__(self, c):
    size = c.data.size
    noisy = dict(radii=tuple(c.noisy.radii), hough_threshold=c.noisy.hough_threshold,
                 min_area=c.noisy.min_area, max_side=c.noisy.max_side)
    if c.data.target == "demo":
      self.target, test = data_lib.ihc_demo(size, c.data.demo_train_width, c.data.demo_rows,
                                            noisy)
      self.readers = {"consensus": test}
      self.target_name = "ihc_demo"
    else:
      name, path = parse_domain(c.data.user[0])
      self.target = data_lib.load_manifest(name, path, size)
      self.readers = {}
      for entry in c.data.user_test:
        reader, p = parse_domain(entry)
        self.readers[reader] = data_lib.load_manifest(reader, p, size)
      self.target_name = name
    if c.data.source == "demo":
      self.source = data_lib.synthetic_cells(c.data.demo_source_images, size, 1337)
      self.source_val = data_lib.synthetic_cells(max(c.train.batch_size, 8), size, 4242)
    else:
      self.source = data_lib.load_cellpose(c.data.cellpose_root, "train", size)
      val = data_lib.load_cellpose(c.data.cellpose_root, "test", size)
      self.source_val = val.subset(range(min(len(val), 64)))


def augment(image: np.ndarray, boxes: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
  """The paper's flips and channel shuffle (its blur and shift-scale-rotate are left out)."""
  flip = ("h" if rng.random() < 0.5 else "") + ("v" if rng.random() < 0.5 else "")
  size = image.shape[0]
  image = paper.flip_image(image, flip)
  boxes = paper.unflip_boxes(boxes, flip, size, size)  # a flip is its own inverse
  if rng.random() < 0.5:
    image = image[..., rng.permutation(3)]
  return np.ascontiguousarray(image), boxes


class EpochBatches:
  """One epoch of mixed batches (half target with its current labels and images, half
  source), a pure function of (seed, epoch), as a grain dataset of chunks."""

  def __init__(self, c, data: Data, target_images: np.ndarray, target_boxes: list,
               seed: int, epoch: int):
    self.c, self.data = c, data
    self.images, self.boxes = target_images, target_boxes
    half = c.train.batch_size // 2
    spc = c.engine.steps_per_call
    steps = -(-len(data.target) // half)
    self.steps = -(-steps // spc) * spc
    rng = np.random.default_rng([seed, epoch, 7])
    order = np.concatenate([rng.permutation(len(data.target))
                            for _ in range(-(-self.steps * half // len(data.target)))])
    self.target_idx = order[:self.steps * half].reshape(self.steps, half)
    self.source_idx = rng.integers(len(data.source), size=(self.steps, half))
    self.seed, self.epoch = seed, epoch

  def batch(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, self.epoch, step, 11])
    imgs, boxes = [], []
    for t in self.target_idx[step]:
      im, b = augment(self.images[t], self.boxes[t], rng)
      imgs.append(im)
      boxes.append(b)
    for s in self.source_idx[step]:
      im, b = augment(self.data.source.image(int(s)), self.data.source.boxes[int(s)], rng)
      imgs.append(im)
      boxes.append(b)
    return dict(targets(boxes, self.c.data.size), images=np.stack(imgs))

  def dataset(self) -> grain.MapDataset:
    spc = self.c.engine.steps_per_call

    def chunk(k):
      bs = [self.batch(i) for i in range(k * spc, (k + 1) * spc)]
      return {key: np.stack([b[key] for b in bs]) for key in bs[0]}
    return grain.MapDataset.range(self.steps // spc).map(chunk)


def synthetic_images(images: np.ndarray, boxes: list, kernel: int, sigma: float) -> np.ndarray:
  """Every target image rebuilt from its pseudo-labelled cells, in a grain pipeline."""
  ds = grain.MapDataset.range(len(images)).map(
      lambda i: paper.synthetic_like(images[i], boxes[i], kernel, sigma))
  return np.stack(list(ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                            prefetch_buffer_size=4))))


# --------------------------------------------------------------------------- experiment
class Experiment:
  def __init__(self, c, workdir: pathlib.Path):
    self.c, self.workdir = c, workdir
    self.data = Data(c)
    self.target_images = self.data.target.images(range(len(self.data.target)))
    self.steps_per_epoch = EpochBatches(c, self.data, self.target_images,
                                        self.data.target.boxes, 0, 0).steps
    t = c.train
    # the base learning rate lives in the optimizer state (inject_hyperparams), so runs
    # that differ only in it share their compiled steps; the step decay multiplies it
    decay = optax.exponential_decay(1.0, t.lr_step_epochs * self.steps_per_epoch, t.lr_gamma,
                                    staircase=True)
    opt = optax.inject_hyperparams(
        lambda learning_rate: optax.sgd(learning_rate, momentum=t.momentum)
        if t.optimizer == "sgd" else optax.adam(learning_rate))(learning_rate=t.learning_rate)
    tx = optax.chain(optax.add_decayed_weights(t.weight_decay), opt,
                     optax.scale_by_schedule(decay))
    self.detector = Detector(stage_sizes=c.model.stage_sizes, width=c.model.width,
                             fpn_features=c.model.fpn_features, dtype=cu.compute_dtype(c),
                             tx=tx, inner_loop=cu.inner_loop(c), image_size=c.data.size,
                             max_dets=c.detect.max_dets, score_min=c.detect.score_min,
                             nms_iou=c.detect.nms_iou)
    self.writer = MetricWriter(workdir)
    val = self.data.source_val
    self.source_val_batch = dict(targets(val.boxes, c.data.size),
                                 images=val.images(range(len(val))))

  # ---- pseudo-labels: TTA versions mapped back, fused by WBF
  def pseudo_labels(self, state) -> list[np.ndarray]:
    c, n, size = self.c, len(self.target_images), self.c.data.size
    per_image: list[tuple[list, list]] = [([], []) for _ in range(n)]
    for scale, flip in paper.tta_versions(c.sissi.tta_scales, c.sissi.tta_flips):
      side = paper.scaled_size(size, scale, 32)
      images = np.stack([paper.flip_image(data_lib.resize(im, side), flip)
                         for im in self.target_images])
      boxes, scores = self.detector.raw_predict(state, images, c.engine.eval_batch_size)
      for i in range(n):
        b, s = self.detector.filter(boxes[i], scores[i], side, side)
        per_image[i][0].append(paper.unflip_boxes(b, flip, side, side) * (size / side))
        per_image[i][1].append(s)
    out = []
    for bs, ss in per_image:
      b, s = paper.weighted_boxes_fusion(bs, ss, c.sissi.wbf_iou)
      out.append(np.clip(b[s >= c.sissi.pseudo_score], 0, size))
    return out

  def ap50_on_noisy(self, state) -> float:
    det = self.detector.predict(state, self.target_images, self.c.engine.eval_batch_size)
    return paper.coco_metrics(det, self.data.target.boxes)["AP50"] / 100

  def evaluate(self, state) -> dict:
    out = {}
    for reader, ds in self.data.readers.items():
      images = ds.images(range(len(ds)))
      det = self.detector.predict(state, images, self.c.engine.eval_batch_size)
      out[reader] = paper.coco_metrics(det, ds.boxes)
      if reader == next(iter(self.data.readers)):
        out["examples"] = [{"boxes": b.tolist(), "scores": s.tolist()} for b, s in det[:4]]
    return out

  # ---- one run
  def run(self, pipeline: str, seed: int, key: str) -> dict:
    c = self.c
    start_rule, blur = pipeline_settings(pipeline)
    name = key.replace("/", "_")
    ckpt_dir = self.workdir / "checkpoints" / "runs" / name
    pseudo_dir = self.workdir / "pseudo" / name
    state = self.detector.init(seed)
    ckpt = Checkpointer(ckpt_dir)
    info = {"epoch": 0, "ap50": [], "source_loss": [], "start": None, "pseudo_version": 0,
            "adele": None}
    try:
      if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(state)
        info = extra["info"]
      labels = self.data.target.boxes if not info["pseudo_version"] else load_pseudo(
          pseudo_dir, info["pseudo_version"])
      spe = self.steps_per_epoch
      while info["epoch"] < c.train.epochs:
        epoch = info["epoch"] + 1
        images = self.target_images
        if info["start"] is not None and epoch >= info["start"]:
          labels = self.pseudo_labels(state)
          save_pseudo(pseudo_dir, epoch, labels)
          info["pseudo_version"] = epoch
          if blur != "none":
            k, sigma = c.sissi[f"blur_{blur}"]
            images = synthetic_images(self.target_images, labels, int(k), float(sigma))
        stream = EpochBatches(c, self.data, images, labels, seed, epoch)
        losses = []
        for chunk in stream.dataset():
          state, metrics = self.detector.train_step(state, chunk)
          metrics = jax.device_get(metrics)
          if not metrics["finite"]:
            last = ckpt.latest_step()
            kept = (f"; the last good checkpoint (epoch {last // spe}) is kept in "
                    f"{ckpt.directory}" if last is not None else "; no checkpoint saved yet")
            raise NonFiniteLossError(f"non-finite loss or parameters in {key} at epoch "
                                     f"{epoch}{kept}")
          losses.append(float(metrics["loss"]))
        info["epoch"] = epoch
        info["ap50"].append(self.ap50_on_noisy(state))
        info["source_loss"].append(self.detector.loss(state, self.source_val_batch))
        if info["start"] is None:
          info["start"] = self.start_epoch(start_rule, info, epoch)
        self.writer.write(key, epoch * spe, {
            "loss": float(np.mean(losses)), "ap50_noisy": info["ap50"][-1],
            "source_val_loss": info["source_loss"][-1], "pseudo_version": info["pseudo_version"],
            "n_labels": int(sum(len(b) for b in labels))})
        signum = workdir_lib.stop_requested()
        if epoch < c.train.epochs or signum:  # the last epoch's result is recorded at once
          ckpt.save(epoch * spe, state, {"info": info})
        if signum:
          raise workdir_lib.Interrupted(f"interrupted in {key}: checkpoint saved after epoch "
                                        f"{epoch}; rerun the same command to resume", signum)
      result = self.evaluate(state)
    finally:
      ckpt.close()
    result.update(start_epoch=info["start"], ap50_noisy=info["ap50"], adele=info["adele"],
                  pseudo_version=info["pseudo_version"],
                  n_pseudo=int(sum(len(b) for b in labels)))
    return result

  def start_epoch(self, rule: str, info: dict, epoch: int) -> int | None:
    """The epoch at which label correction starts (the next one), or None for not yet."""
    if rule != "never" and self.c.sissi.force_start:
      return self.c.sissi.force_start if epoch + 1 >= self.c.sissi.force_start else None
    if rule == "adele":
      go, details = paper.adele_should_start(info["ap50"], epoch, self.c.sissi.adele_threshold,
                                             min_increment=self.c.sissi.adele_min_increment)
      info["adele"] = details
      return epoch + 1 if go else None
    if rule == "source_loss":  # the epoch after the source validation loss stops falling
      sl = info["source_loss"]
      return epoch + 1 if len(sl) >= 2 and sl[-1] > min(sl[:-1]) else None
    return None


def save_pseudo(directory: pathlib.Path, version: int, labels: list) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  files.write_text(directory / f"v{version:04d}.json",
                   json.dumps([np.asarray(b).round(4).tolist() for b in labels]))


def load_pseudo(directory: pathlib.Path, version: int) -> list:
  path = directory / f"v{version:04d}.json"
  return [np.array(b, np.float64).reshape(-1, 4) for b in json.loads(path.read_text())]


# --------------------------------------------------------------------------- driver
def run_key(pipeline: str, seed: int) -> str:
  return f"{pipeline}/{seed}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  label = label_of(c, exp.data.target_name)
  print(f"data: target {exp.data.target_name} ({len(exp.data.target)} images, "
        f"{sum(len(b) for b in exp.data.target.boxes)} noisy boxes), source "
        f"{exp.data.source.name} ({len(exp.data.source)} images); readers "
        f"{list(exp.data.readers)}; pipelines {list(c.sissi.pipelines)}; seeds "
        f"{list(c.seeds)}; {exp.steps_per_epoch} steps per epoch", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  for seed in c.seeds:
    for pipeline in c.sissi.pipelines:
      key = run_key(pipeline, seed)
      if runs.done(key):
        continue
      result = exp.run(pipeline, seed, key)
      runs.record(key, result)
      shutil.rmtree(workdir / "checkpoints" / "runs" / key.replace("/", "_"),
                    ignore_errors=True)  # recorded: its checkpoints are no longer needed
  table = summarise(runs.runs, c, list(exp.data.readers))
  final = {f"{reader}/{p}/{m}": cell[m][0] for reader, rows in table.items()
           for p, cell in rows.items() for m in cell}
  files.write_text(workdir / "results.md", table_markdown(table, c, label))
  files.write_text(workdir / "results.json", json.dumps(
      {"label": label, "variant": c.variant, "seeds": list(c.seeds),
       "pipelines": list(c.sissi.pipelines), "table": table}, indent=1))
  from medda_jax.methods.sissi import figures
  first = list(exp.data.readers)[0]
  figures.before_after(workdir / "sissi_detections.png", exp.data.readers[first], runs.runs,
                       c, title=f"detections on {first} test tiles"
                       + (" (DEMO DATA)" if "DEMO" in label else ""))
  exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
