"""Input pipeline of a chest X-ray run: peak memory against the dataset's size, and images/s
of the streamed pipeline against images/s of the classifier's training step.

  python benchmarks/input_pipeline.py --cpu              # writes input_pipeline_cpu.json
  python benchmarks/input_pipeline.py --sizes 2000,20000 --workers 4

The benchmark writes its own fixture: a ChestX-ray14-layout folder (Data_Entry_2017.csv, the
two split lists, images_001/images/*.png) of `--source-size` px greyscale PNGs, one for each
dataset size (the smaller ones list a prefix of the same images). For every size, fresh
processes measure the peak resident memory (getrusage ru_maxrss, the process and its
decoding workers) of
  table    loading the site's table only (the fixed cost),
  stream   one shuffled pass through `images.batches` over `cxr_sites.site_source` (decode and
           resize in grain's map, `--threads` threads, `--workers` processes),
  eager    `cxr_sites.read_images`, the whole site as one float32 array (how the chest
           X-ray trainer read a site before it streamed),
  stargan  the StarGAN + CyCADA trainer's path: its chest X-ray domain (`_cxr_domain`, the
           `cxr_smoke` config at `--size` px, lazily decoded splits), one classifier epoch
           on the training split with its validation, and the test split's predictions.
The training step is a DenseNet-121-style classifier (`DenseNetCXR`, the `cxr_smoke` widths
unless `--full-densenet`) at batch `--batch`, jitted, Adam; its images/s on this device is
set against the stream's images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def write_fixture(base: pathlib.Path, sizes: list[int], source_size: int) -> dict[int, str]:
  """One shared image folder of max(sizes) PNGs and a ChestX-ray14 root per size."""
  import numpy as np
  from PIL import Image
  n_max = max(sizes)
  images = base / "shared_images"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  ramp = np.linspace(40, 200, source_size)[None, :] + np.linspace(0, 30, source_size)[:, None]
  names, rows = [], []
  for i in range(n_max):
    patient, k = i // 3 + 1, i % 3
    name = f"{patient:08d}_{k:03d}.png"
    pixels = np.clip(ramp + rng.normal(0, 8, ramp.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(images / name)
    finding = "Infiltration" if rng.random() < 0.4 else "No Finding"
    names.append(name)
    rows.append(f"{name},{finding},{k},{patient},PA")
  roots = {}
  for n in sizes:
    root = base / f"nih_{n}"
    (root / "images_001").mkdir(parents=True)
    (root / "images_001" / "images").symlink_to(images, target_is_directory=True)
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,View Position\n"
        + "\n".join(rows[:n]) + "\n")
    cut = n * 4 // 5
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[cut:n]) + "\n")
    roots[n] = str(root)
  return roots


def child(mode: str, root: str, size: int, batch: int, threads: int, workers: int) -> dict:
  """Runs in a fresh process: one measurement, printed as JSON."""
  import numpy as np
  from medda_jax.data import cxr_sites, images
  table = cxr_sites.load_opacity_site("nih", root)
  t = time.perf_counter()
  n = 0
  if mode == "stream":
    source = cxr_sites.site_source(table, size)
    for x, y in images.batches(source, np.arange(len(table)), batch, seed=0, threads=threads,
                               workers=workers):
      n += len(y)
  elif mode == "eager":
    n = len(cxr_sites.read_images(table, size))
  elif mode == "stargan":
    n = stargan_epoch(root, size, batch)
  seconds = time.perf_counter() - t
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {"mode": mode, "images": int(len(table)), "read": n, "seconds": seconds,
          "images_per_s": n / seconds if n else None,
          "peak_rss_mib": own / 1024, "peak_rss_workers_mib": workers_rss / 1024}


def stargan_epoch(root: str, size: int, batch: int) -> int:
  """StarGAN's chest X-ray domain and one classifier epoch; returns the images trained on."""
  from medda_jax import config_utils as cu
  from medda_jax import parallel
  from medda_jax.config_utils import load_config
  from medda_jax.methods import stargan_da as sd
  repo = pathlib.Path(__file__).resolve().parents[1]
  c = load_config(str(repo / "configs" / "stargan.py") + ":cxr_smoke")
  c.data.dirs.nih, c.data.size = root, size
  c.classifier.batch_size, c.classifier.max_epochs = batch, 1
  domain = sd.experiment._cxr_domain(c, "nih")
  trainer = sd.TaskTrainer(c, 2, parallel.data_mesh(), cu.inner_loop(c), cu.compute_dtype(c))
  variables, _, _ = trainer.train(domain.train, domain.val, seed=0)
  trainer.probs(variables, domain.test.images)
  return len(domain.train)


def measure(mode: str, root: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--root", root,
         "--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads),
         "--workers", str(args.workers)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
  if proc.returncode:
    return {"mode": mode, "error": common.error_text(RuntimeError(proc.stderr[-800:]))}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def step_rate(args) -> dict:
  """images/s of one jitted training step of the chest X-ray classifier."""
  import jax
  import jax.numpy as jnp
  import optax
  from medda_jax.models.densenet import DenseNetCXR
  overrides = {} if args.full_densenet else {
      "block_sizes": (1, 1), "growth_rate": 4, "bn_size": 2, "init_features": 8,
      "hidden": (8, 4)}
  net = DenseNetCXR(num_classes=2, **overrides)
  x = jnp.zeros((args.batch, args.size, args.size, 3))
  y = jnp.zeros((args.batch,), jnp.int32)
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(2e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      logits, new = net.apply({"params": p, **stats}, x, train=True, mutable=list(stats),
                              rngs={"dropout": jax.random.PRNGKey(1)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new, opt, loss

  state = [params, stats, opt]

  def run():
    state[0], state[1], state[2], loss = step(*state, x, y)
    return loss

  timing = common.time_repeats(run, common.jax_block, warmup=2, repeats=3, iters=5)
  return {"images_per_s": args.batch / timing["seconds_per_call"], "batch": args.batch,
          "densenet": "full DenseNet-121" if args.full_densenet else "cxr_smoke widths",
          **timing}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cpu", action="store_true", help="measure on the CPU")
  p.add_argument("--cpu-threads", type=int, default=None)
  p.add_argument("--sizes", default="2000,20000", help="dataset sizes (images)")
  p.add_argument("--size", type=int, default=64, help="image side after resizing")
  p.add_argument("--source-size", type=int, default=96, help="side of the fixture's PNGs")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--threads", type=int, default=2, help="decoding threads per process")
  p.add_argument("--workers", type=int, default=0, help="decoding processes (mp_prefetch)")
  p.add_argument("--full-densenet", action="store_true")
  p.add_argument("--modes", default="table,stream,eager,stargan",
                 help="memory measurements (table, stream, eager, stargan)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--root", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args.root, args.size, args.batch, args.threads,
                           args.workers)))
    return
  common.setup_platform(force_cpu=args.cpu, cpu_threads=args.cpu_threads)
  import jax
  platform = "cpu" if jax.default_backend() == "cpu" else "gpu"
  device = common.jax_device_info(platform)
  sizes = [int(s) for s in args.sizes.split(",")]
  base = pathlib.Path(tempfile.mkdtemp(prefix="input_pipeline_"))
  try:
    t = time.perf_counter()
    roots = write_fixture(base, sizes, args.source_size)
    fixture_s = time.perf_counter() - t
    memory = {n: {mode: measure(mode, roots[n], args) for mode in args.modes.split(",")}
              for n in sizes}
  finally:
    shutil.rmtree(base, ignore_errors=True)
  step = step_rate(args)
  small, large = memory[min(sizes)], memory[max(sizes)]
  streamed = large.get("stream", {}).get("images_per_s") or 0.0

  def growth(mode):
    if mode not in small or "error" in small[mode] or "error" in large[mode]:
      return None
    return large[mode]["peak_rss_mib"] - small[mode]["peak_rss_mib"]

  ratio = {"stream_over_step_images_per_s": streamed / step["images_per_s"],
           "stream_peak_rss_growth_mib": growth("stream"),
           "eager_peak_rss_growth_mib": growth("eager"),
           "table_peak_rss_growth_mib": growth("table"),
           "stargan_peak_rss_growth_mib": growth("stargan")}
  notes = [f"fixture written in {fixture_s:.0f} s: ChestX-ray14 layout, {args.source_size} px "
           f"greyscale PNGs resized to {args.size} px; peak RSS per fresh process "
           "(ru_maxrss; workers' separately).",
           "stream = images.batches over cxr_sites.site_source; eager = cxr_sites.read_images "
           "(today's trainer path, which then also replicates to 3 channels).",
           "stargan = the StarGAN trainer's chest X-ray domain (decoded per batch) and one "
           "classifier epoch with validation and test predictions."]
  path = common.result_path("input_pipeline", platform, device)
  common.write_json(path, benchmark="input_pipeline", platform=platform, device=device,
                    shapes={"sizes": sizes, "image_size": args.size, "batch": args.batch,
                            "threads": args.threads, "workers": args.workers},
                    results={"memory": {str(n): v for n, v in memory.items()}, "step": step},
                    ratio=ratio, notes=notes)
  print(json.dumps({"memory": memory, "step": step, "ratio": ratio}, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
