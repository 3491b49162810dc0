"""SISSI's host-side work against its detector step: does the input side keep up?

Per epoch of a correcting SISSI pipeline (methods/sissi/experiment.py), the host
  clones    rebuilds every target image from its pseudo-labelled cells
            (`experiment.synthetic_images`: Gaussian-blurred background, each box seamlessly
            cloned with OpenCV, a grain pipeline of 2 threads; also timed on one thread),
  batches   assembles the epoch's mixed batches (`experiment.EpochBatches`: half target,
            half labelled source, flips and channel shuffle, the detector's heat-map
            targets), read in the loop while the device trains,
and the device trains the detector (`Detector.train_step`, one step per call). The
cloning runs once per pseudo-label version, before the epoch, and is not overlapped
with training: its share of an epoch is clone time / (clone time + the epoch's training
time), an epoch training on every target image once in batches of `batch_size / 2`
target + as many source images. The batches are overlapped with training, so they keep
up when their images/s is at least the step's.

Target images: scikit-image's real IHC image (the demo's stand-in), cut into `size`-px
tiles (the whole image resized at 512 px), with the weak-label generators' boxes
(`noisy_labels.voted_boxes`) as pseudo-labels, repeated to `--images`. Source: the demo's
synthetic labelled cells (Cellpose does not install offline). The cloning's cost grows
with the number of boxes, reported with the figures.

  python benchmarks/sissi_pipeline.py                  # the paper's shapes: 512 px, ResNet-50 + FPN, batch 8
  python benchmarks/sissi_pipeline.py --cpu --quick    # the demo's shapes: 64 px, its tiny detector
"""

from __future__ import annotations

import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--variant", default=None, choices=("paper", "demo"),
                 help="configs/sissi.py variant whose shapes are measured (default: paper on "
                      "a GPU, demo on the CPU)")
  p.add_argument("--images", type=int, default=None,
                 help="target images per epoch (default 64 at the demo's shapes, 32 at the paper's)")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


def target_images(size: int, count: int, noisy: dict):
  """`count` uint8 [size, size, 3] images cut from the real IHC image, with their boxes."""
  import numpy as np
  from skimage import data
  from medda_jax.methods.sissi import data as data_lib, noisy_labels
  image = data.immunohistochemistry()
  boxes, _ = noisy_labels.voted_boxes(image, **noisy)
  if size >= image.shape[0]:
    tiles = [(data_lib.resize(image, size), boxes * (size / image.shape[0]))]
  else:
    tiles = [(image[y:y + size, x:x + size], data_lib.tile_boxes(boxes, x, y, size))
             for y in range(0, image.shape[0] - size + 1, size)
             for x in range(0, image.shape[1] - size + 1, size)]
  picks = [tiles[i % len(tiles)] for i in range(count)]
  return np.stack([t[0] for t in picks]), [np.asarray(t[1], np.float32) for t in picks]


def rate(run, images: int, warmup: int, repeats: int) -> dict:
  """images/s of `run()` (host work: nothing to wait for), median of `repeats` calls."""
  t = common.time_repeats(run, lambda _: None, warmup=warmup, repeats=repeats, iters=1)
  return {"images_per_s": images / t["seconds_per_call"], **t}


def main():
  args = parse_args()
  common.setup_platform(args.cpu, args.cpu_threads)
  import jax
  import numpy as np
  import optax
  platform = "cpu" if jax.default_backend() == "cpu" else "gpu"
  device = common.jax_device_info(platform)
  from medda_jax.config_utils import load_config
  from medda_jax.methods.sissi import data as data_lib, experiment, paper
  from medda_jax.methods.sissi.detector import Detector

  variant = args.variant or ("paper" if platform == "gpu" else "demo")
  c = load_config(f"configs/sissi.py:{variant}")
  size, batch = c.data.size, c.train.batch_size
  n = args.images or (32 if variant == "paper" else 64)
  repeats, warmup = (2, 1) if args.quick else (5, 1)
  images, boxes = target_images(size, n, dict(c.noisy))
  source = data_lib.synthetic_cells(64, size, 1337)
  per_image = [len(b) for b in boxes]
  print(f"SISSI pipeline on {device['name']}: {variant} shapes, {n} target images of {size} px "
        f"({np.mean(per_image):.1f} pseudo-labelled cells each), batch {batch}", flush=True)

  results = {}
  for blur in ("weak", "strong"):
    k, sigma = c.sissi[f"blur_{blur}"]
    results[f"clone {blur} blur, grain 2 threads"] = rate(
        lambda: experiment.synthetic_images(images, boxes, int(k), float(sigma)), n, warmup,
        repeats)
    results[f"clone {blur} blur, one thread"] = rate(
        lambda: [paper.synthetic_like(im, b, int(k), float(sigma)) for im, b in zip(images, boxes)],
        n, warmup, repeats)
  data = types.SimpleNamespace(target=boxes, source=source)  # what EpochBatches reads
  stream = experiment.EpochBatches(c, data, images, boxes, seed=0, epoch=1)
  epoch_images = stream.steps * batch
  results["batches"] = rate(lambda: list(stream.dataset()), epoch_images, warmup, repeats)
  for name, r in results.items():
    print(f"  {name:34s} {common.images_per_s_text(r)}", flush=True)

  tx = optax.chain(optax.add_decayed_weights(c.train.weight_decay),
                   optax.sgd(c.train.learning_rate, momentum=c.train.momentum)
                   if c.train.optimizer == "sgd" else optax.adam(c.train.learning_rate))
  det = Detector(stage_sizes=c.model.stage_sizes, width=c.model.width,
                 fpn_features=c.model.fpn_features, dtype=jax.numpy.float32, tx=tx,
                 inner_loop="host", image_size=size, max_dets=c.detect.max_dets,
                 score_min=c.detect.score_min, nms_iou=c.detect.nms_iou)
  first_chunk = next(iter(stream.dataset()))  # [steps_per_call, batch, ...]
  chunk = jax.device_put(jax.tree.map(lambda x: x[:1], first_chunk))  # one step per call
  state = det.init(0)
  t0 = time.perf_counter()
  state, _ = det.train_step(state, chunk)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0
  timing = dict(warmup=1, repeats=repeats, iters=1 if platform == "cpu" else 10)
  results["detector step"] = common.time_state_step(det.train_step, state, chunk, batch, timing,
                                                    first_call_seconds=first)
  print(f"  {'detector step':34s} {common.images_per_s_text(results['detector step'])}",
        flush=True)

  step_ips = results["detector step"]["images_per_s"]
  train_s = epoch_images / step_ips
  ratio = {"batches_over_step": results["batches"]["images_per_s"] / step_ips}
  for blur in ("weak", "strong"):
    clone_s = n / results[f"clone {blur} blur, grain 2 threads"]["images_per_s"]
    ratio[f"clone_{blur}_share_of_epoch"] = clone_s / (clone_s + train_s)
  notes = [
      "No PyTorch peer: this measures the input side of SISSI against its own detector step.",
      "batches_over_step >= 1: the mixed batches are assembled at least as fast as the "
      "detector trains on them (they are read while it trains).",
      "clone_*_share_of_epoch: the cloning of all target images, once per pseudo-label "
      "version and before the epoch, as a share of that epoch's wall time (cloning + "
      f"{stream.steps} detector steps of {batch} images).",
      "Detector: the config's widths, float32, the engine's compiled chunk of one step "
      "(host executor), state donated on accelerators; the first call (compilation) is not timed.",
  ]
  path = args.out or common.result_path("sissi_pipeline", platform, device)
  common.write_json(path, benchmark="sissi_pipeline", platform=platform, device=device,
                    shapes={"variant": variant, "image_size": size, "batch": batch,
                            "target_images": n, "cells_per_image_mean": float(np.mean(per_image)),
                            "steps_per_epoch": stream.steps,
                            "detector": {"stage_sizes": list(c.model.stage_sizes),
                                         "width": c.model.width,
                                         "fpn_features": c.model.fpn_features}},
                    results=results, ratio=ratio, notes=notes)
  print(f"ratio {ratio}\nwrote {path}")


if __name__ == "__main__":
  main()
