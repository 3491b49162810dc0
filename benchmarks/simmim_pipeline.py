"""SimMIM's pre-training input pipeline against its JAX step: is there headroom?

The pipeline is `simmim.experiment.Study.pretrain`'s `make_batch` done per sample: an
image of the corpus (in memory, at the pre-training size, as the demo corpora's
`ImageRows.read` returns it), `experiment.random_resized_crop` (RandomResizedCrop with
scale (0.67, 1), bilinear, and a horizontal flip, seeded by (seed, sample id)) and its
mask (`paper.batch_masks`: 32-pixel cells, ratio 0.6, upsampled to the model's patch
grid), as a grain `MapDataset` mapped per sample and batched, read through
`to_iter_dataset` with N threads. Also measured: the loop as `make_batch` runs it today
(a whole batch per map call, `trainer.call_batches`' one thread). Image decoding is not
included (`input_pipeline.py` measures it for the ChestX-ray14 layout).

Its images/s is set against the JAX step's images/s at the same shapes
(`simmim_step.py`'s best JAX variant: read from that benchmark's JSON with `--step-json`,
else measured here): headroom = pipeline / step, goal >= 2. JAX only, no PyTorch peer.

  python benchmarks/simmim_pipeline.py                 # GPU: 224 px, batch 64, ViT-B/16 and Swin-B steps
  python benchmarks/simmim_pipeline.py --cpu --cpu-threads 1 --quick   # simmim_step's CPU shapes
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import simmim_step  # noqa: E402

SEED = 0


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--backbones", default="vit,swin")
  p.add_argument("--batch", type=int, default=None, help="default 64 on GPU, 8 on CPU")
  p.add_argument("--size", type=int, default=None, help="default 224 on GPU, 96 on CPU")
  p.add_argument("--threads", default=None, help="grain threads, default 1,4,8 on GPU, 1,2 on CPU")
  p.add_argument("--images", type=int, default=None,
                 help="images per timed pass (default 512 on GPU, 256 on CPU)")
  p.add_argument("--step-json", default=None,
                 help="read the step's images/s from simmim_step's JSON ('auto': this "
                      "device's result file) instead of measuring it")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


def corpus(n: int, size: int):
  """n smooth one-channel images [n, S, S, 1] in [0, 1] (a stand-in for the radiographs)."""
  import numpy as np
  from scipy import ndimage
  rng = np.random.default_rng(SEED)
  x = ndimage.gaussian_filter(rng.uniform(size=(n, size, size)), (0, size / 32, size / 32))
  x = (x - x.min()) / (x.max() - x.min())
  return x[..., None].astype(np.float32)


def per_sample_dataset(images, size: int, patch: int, batch: int, count: int):
  """grain MapDataset of `count` samples: crop + flip + mask per sample, then batched."""
  import grain
  import numpy as np
  from medda_jax.methods.simmim import experiment, paper

  def sample(j):
    x = images[j % len(images)]
    image = experiment.random_resized_crop(x[..., 0], size, np.random.default_rng([SEED, int(j)]))
    mask = paper.batch_masks(SEED, np.asarray([j]), size, simmim_step.MASK_PATCH, patch,
                             simmim_step.MASK_RATIO)[0]
    return {"image": np.ascontiguousarray(image[..., None], np.float32), "mask": mask}

  return grain.MapDataset.range(count).map(sample).batch(batch, drop_remainder=True)


def batch_dataset(images, size: int, patch: int, batch: int, count: int):
  """The loop as make_batch runs it: one map call builds a whole batch, serially."""
  import grain
  import numpy as np
  from medda_jax.methods.simmim import experiment, paper

  def make_batch(k):
    sample = np.arange(k * batch, (k + 1) * batch)
    raw = images[sample % len(images)]
    out = np.stack([experiment.random_resized_crop(x[..., 0], size,
                                                   np.random.default_rng([SEED, int(j)]))
                    for x, j in zip(raw, sample)])[..., None]
    masks = paper.batch_masks(SEED, sample, size, simmim_step.MASK_PATCH, patch,
                              simmim_step.MASK_RATIO)
    return {"image": out.astype(np.float32), "mask": masks}

  return grain.MapDataset.range(count // batch).map(make_batch)


def rate(make_ds, threads: int, count: int, repeats: int) -> dict:
  """Images/s of reading the whole dataset through to_iter_dataset (median of passes; a
  first pass warms up)."""
  import statistics
  import grain

  def one_pass():
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads))
    t = time.perf_counter()
    n = sum(b["image"].shape[0] for b in make_ds().to_iter_dataset(options))
    return n / (time.perf_counter() - t)

  one_pass()
  passes = [one_pass() for _ in range(repeats)]
  return {"images_per_s": statistics.median(passes), "images_per_s_passes": passes,
          "threads": threads, "images_per_pass": count}


def step_from_json(path: str, backbone: str, batch: int, size: int, platform: str):
  """(images/s, variant) of the best JAX variant of `backbone` in simmim_step's JSON, or
  None when the file is missing or measured other shapes or another platform."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  s = data.get("shapes", {})
  if (data.get("platform") != platform or s.get("batch") != batch or s.get("height") != size):
    return None
  name, ips = common.best_variant(data.get("results", {}), f"{backbone}/jax", "images_per_s")
  return (ips, name) if ips else None


def measure_step(backbone: str, m: dict, batch: int, size: int, gpu: bool, repeats: int):
  import jax
  import jax.numpy as jnp
  from medda_jax.engine.supervised import TrainState
  dtype = jnp.bfloat16 if gpu else jnp.float32
  model = simmim_step.jax_model(backbone, m, size, dtype)
  params = simmim_step.jax_init(model, m, size)
  x_np, mask_np = simmim_step.make_batch(backbone, m, batch, size)
  lr = simmim_step.BASE_LR * batch / simmim_step.LR_BATCH
  t0 = time.perf_counter()
  tx, chunk = simmim_step.jax_chunk(model, m, lr)
  state = TrainState.create(params, tx, rng=jax.random.PRNGKey(1))
  batches = jax.device_put({"image": x_np[None], "mask": mask_np[None]})
  state, _ = chunk(state, batches)
  jax.block_until_ready(state)
  timing = dict(warmup=1, repeats=repeats, iters=5 if gpu else 1)
  r = common.time_state_step(chunk, state, batches, batch, timing,
                             first_call_seconds=time.perf_counter() - t0)
  return r, f"{backbone}/jax jit {'bf16' if gpu else 'fp32'}"


def main():
  args = parse_args()
  args.cpu_threads = args.cpu_threads or common.env_int("BENCH_CPU_THREADS", 0) or None
  common.setup_platform(args.cpu, args.cpu_threads)
  import jax
  platform = "cpu" if jax.default_backend() == "cpu" else "gpu"
  device = common.jax_device_info(platform)
  gpu = platform == "gpu"
  models = simmim_step.GPU_MODELS if gpu else simmim_step.CPU_MODELS
  args.batch = args.batch or (64 if gpu else 8)
  args.size = args.size or (224 if gpu else 96)
  args.images = args.images or (512 if gpu else 256)
  args.images -= args.images % args.batch
  threads = [int(t) for t in (args.threads or ("1,4,8" if gpu else "1,2")).split(",")]
  repeats = 3 if args.quick else 5
  backbones = [b for b in args.backbones.split(",") if b]
  step_json = args.step_json
  if step_json == "auto":
    step_json = common.result_path("simmim_step", platform, device)
  print(f"SimMIM input pipeline on {device['name']}: batch {args.batch} at "
        f"{args.size}x{args.size}, {args.images} images per pass, threads {threads}", flush=True)
  images = corpus(64, args.size)
  results, ratio = {}, {}
  for b in backbones:
    patch = models[b]["patch"]
    name = f"{b}/make_batch (batch per call, 1 thread)"
    results[name] = rate(lambda: batch_dataset(images, args.size, patch, args.batch, args.images),
                         1, args.images, repeats)
    print(f"  {name:44s} {common.images_per_s_text(results[name])}", flush=True)
    for n in threads:
      name = f"{b}/per sample, grain {n} threads"
      results[name] = rate(lambda: per_sample_dataset(images, args.size, patch, args.batch,
                                                      args.images), n, args.images, repeats)
      print(f"  {name:44s} {common.images_per_s_text(results[name])}", flush=True)
    found = step_from_json(step_json, b, args.batch, args.size, platform) if step_json else None
    if found:
      step_ips, step_name = found
      results[f"{b}/step"] = {"images_per_s": step_ips, "variant": step_name,
                              "source": os.path.basename(step_json)}
    else:
      r, step_name = measure_step(b, models[b], args.batch, args.size, gpu, repeats)
      results[f"{b}/step"] = dict(r, variant=step_name, source="measured here")
      step_ips = r["images_per_s"]
    print(f"  {b + '/step (' + step_name + ')':44s} {step_ips:9.2f} images/s", flush=True)
    pipe = {k: v["images_per_s"] for k, v in results.items()
            if k.startswith(f"{b}/per sample")}
    best = max(pipe, key=pipe.get)
    ratio[b] = {"pipeline_best": best, "pipeline_best_images_per_s": pipe[best],
                "step_images_per_s": step_ips, "step_variant": step_name,
                "headroom_pipeline_over_step": pipe[best] / step_ips,
                "make_batch_over_step":
                    results[f"{b}/make_batch (batch per call, 1 thread)"]["images_per_s"]
                    / step_ips,
                "goal": ">= 2", "meets_goal": pipe[best] / step_ips >= 2}
  notes = [
      "No PyTorch peer: SimMIM's input side against its own JAX step.",
      "headroom_pipeline_over_step = the best per-sample pipeline's images/s over the JAX "
      "step's (its best variant at the same batch and size); goal >= 2. The pipeline is "
      "timed alone: on the machine that trains, it shares the host's cores with the step's "
      "dispatch.",
      "Per sample: experiment.random_resized_crop (scale 0.67-1, bilinear ndimage.zoom, "
      "flip) + paper.batch_masks for one sample id, grain MapDataset.map per sample, "
      ".batch, to_iter_dataset(ReadOptions(num_threads=N, prefetch 2N)); images from "
      "memory at the pre-training size (the demo corpora's read), decoding not included.",
      "make_batch: a whole batch per map call (today's Study.pretrain through "
      "trainer.call_batches, one thread).",
  ]
  if not gpu:
    notes.append(f"CPU: simmim_step's CPU shapes (batch {args.batch}, {args.size} px, the "
                 "small encoders); with --cpu-threads 1 every grain thread shares the one "
                 "core, so more threads cannot help here.")
  path = args.out or common.result_path("simmim_pipeline", platform, device)
  common.write_json(path, benchmark="simmim_pipeline", platform=platform, device=device,
                    shapes={"batch": args.batch, "height": args.size, "width": args.size,
                            "channels": 1, "mask_patch": simmim_step.MASK_PATCH,
                            "mask_ratio": simmim_step.MASK_RATIO, "images_per_pass": args.images,
                            "grain_threads": threads,
                            "models": {b: models[b] for b in backbones}},
                    results=results, ratio=ratio, notes=notes)
  print(f"ratio {ratio}\nwrote {path}")


if __name__ == "__main__":
  main()
