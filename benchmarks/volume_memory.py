"""Peak memory of a segmentation run's data against the dataset's size: a Decathlon-layout
task preprocessed into the slice cache, then MetaMedSeg meta-batches drawn from it.

  python benchmarks/volume_memory.py --cpu              # writes volume_memory_cpu.json
  python benchmarks/volume_memory.py --cases 20,400 --volume 160,160,60 --size 128

The benchmark writes its own fixture: one Decathlon-layout task folder (`dataset.json`,
imagesTr, labelsTr; smooth MR-like volumes with an ellipsoid label) per size, the smaller
listing a prefix of the larger's cases. For every size, fresh processes measure the peak
anonymous resident memory (RssAnon of /proc/self/status, sampled every 5 ms: the memory the
process holds) and the peak resident set (ru_maxrss, which also counts the pages of mapped
files it touched: page cache that the kernel drops under pressure) of
  build    preprocessing the task into the cache folder (`data/arraycache.py`; the first run),
  mapped   a later run: the task read from its cache, memory-mapped, and `--batches`
           volumetric meta-batches of `--tasks` x `--shots` slices drawn from it,
  whole    the same with the banks read whole into memory first (how the loaders held a task
           before the cache was memory-mapped).
Data loading only: no model is trained, so the figures say the same on any accelerator.
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

MODES = ("build", "mapped", "whole")


def write_fixture(base: pathlib.Path, cases: list[int], shape: tuple[int, int, int]) -> dict:
  """One image/label pair per case in a shared folder; a task folder per size linking them."""
  import nibabel as nib
  import numpy as np
  from scipy import ndimage
  shared = base / "shared"
  (shared / "imagesTr").mkdir(parents=True)
  (shared / "labelsTr").mkdir(parents=True)
  rng = np.random.default_rng(0)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
  affine = np.diag([1.0, 1.0, 2.5, 1.0])
  for i in range(max(cases)):
    image = ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32) * 400 + 600
    radii = rng.uniform(0.3, 0.6, size=3)[:, None, None, None]
    label = (((grid / radii) ** 2).sum(0) < 1).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, affine), shared / "imagesTr" / f"case_{i:04d}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), shared / "labelsTr" / f"case_{i:04d}.nii.gz")
  roots = {}
  for n in cases:
    root = base / f"Task90_Bench{n}"
    for sub in ("imagesTr", "labelsTr"):
      (root / sub).mkdir(parents=True)
      for i in range(n):
        os.symlink(shared / sub / f"case_{i:04d}.nii.gz", root / sub / f"case_{i:04d}.nii.gz")
    entries = [{"image": f"./imagesTr/case_{i:04d}.nii.gz",
                "label": f"./labelsTr/case_{i:04d}.nii.gz"} for i in range(n)]
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "labels": {"0": "background", "1": "organ"},
        "modality": {"0": "MRI"}, "training": entries, "test": []}))
    roots[n] = str(root)
  return roots


def anon_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def child(mode: str, root: str, cache: str, args) -> dict:
  import threading
  peak = [anon_mib()]
  done = threading.Event()

  def sample():
    while not done.wait(0.005):
      peak[0] = max(peak[0], anon_mib())

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  try:
    out = run_child(mode, root, cache, args)
  finally:
    done.set()
    sampler.join()
  out["peak_anon_mib"] = max(peak[0], anon_mib())
  return out


def run_child(mode: str, root: str, cache: str, args) -> dict:
  import numpy as np
  from medda_jax.data import arraycache, tasks, user_seg
  if mode == "whole":  # the cache read whole, as the loaders read their .npz before
    arraycache._read = lambda file, mmap: np.load(file, allow_pickle=False)
  start = time.perf_counter()
  sources = user_seg.parse_sources([f"bench={root}"])
  collection = user_seg.load_user_collection(sources, image_size=args.size, cache_dir=cache)
  load_s = time.perf_counter() - start
  (name,) = collection.names()
  dataset = collection[name]
  out = {"slices": len(dataset), "bank_mib": (dataset.images.nbytes + dataset.labels.nbytes)
         / 2**20, "load_s": load_s}
  if mode == "build":
    return out
  start = time.perf_counter()
  for i in range(args.batches):
    tasks.meta_batch(collection, [name], i, seed=0, tasks_per_batch=args.tasks,
                     shots=args.shots, task_definition="volumetric")
  out["meta_batches_per_s"] = args.batches / (time.perf_counter() - start)
  return out


def measure(mode: str, root: str, cache: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--root", root,
         "--cache", cache, "--size", str(args.size), "--batches", str(args.batches),
         "--tasks", str(args.tasks), "--shots", str(args.shots)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    return {"error": common.error_text(RuntimeError(proc.stderr[-400:]))}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cpu", action="store_true", help="write volume_memory_cpu.json (else "
                 "volume_memory_host.json; data only, no accelerator is used)")
  p.add_argument("--cases", default="20,200", help="dataset sizes (volumes)")
  p.add_argument("--volume", default="128,128,48", help="fixture volume shape")
  p.add_argument("--size", type=int, default=96, help="slice side after resizing")
  p.add_argument("--batches", type=int, default=50)
  p.add_argument("--tasks", type=int, default=5)
  p.add_argument("--shots", type=int, default=15)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--root", default=None, help=argparse.SUPPRESS)
  p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    out = child(args.child, args.root, args.cache, args)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    return
  cases = [int(n) for n in args.cases.split(",")]
  shape = tuple(int(n) for n in args.volume.split(","))
  load_at_start = common.load_average()
  base = pathlib.Path(tempfile.mkdtemp(prefix="volume_memory_"))
  try:
    t = time.perf_counter()
    roots = write_fixture(base, cases, shape)
    fixture_s = time.perf_counter() - t
    memory = {}
    for n in cases:
      cache = str(base / f"cache{n}")
      memory[n] = {mode: measure(mode, roots[n], cache, args) for mode in MODES}
  finally:
    shutil.rmtree(base, ignore_errors=True)
  small, large = memory[min(cases)], memory[max(cases)]
  ratio = {f"{mode}_{what[:-4]}_growth_mib": large[mode][what] - small[mode][what]
           for mode in MODES for what in ("peak_anon_mib", "peak_rss_mib")
           if "error" not in small[mode] and "error" not in large[mode]}
  device = {"cpu": common.cpu_model(), "cpu_cores": common.usable_cores(),
            "load_average_at_start": load_at_start,
            "name": f"CPU: {common.cpu_model()} ({common.usable_cores()} cores)"}
  notes = [f"fixture written in {fixture_s:.0f} s: Decathlon layout, {shape} float32 MR "
           f"volumes resized to {args.size} px slices; per fresh process: peak anonymous memory "
           "(RssAnon, sampled every 5 ms) and peak RSS (ru_maxrss, counting touched pages of "
           "mapped files).",
           "build = preprocessing into the cache; mapped = the cached banks memory-mapped and "
           f"{args.batches} volumetric meta-batches drawn; whole = the same banks read whole "
           "first."]
  # Without --cpu (run_all.sh on a GPU machine): the host's figures, beside the CPU ones.
  path = os.path.join(common.RESULTS_DIR, f"volume_memory_{'cpu' if args.cpu else 'host'}.json")
  common.write_json(path, benchmark="volume_memory", platform="host", device=device,
                    shapes={"cases": cases, "volume": shape, "image_size": args.size,
                            "tasks": args.tasks, "shots": args.shots},
                    results={"memory": {str(n): v for n, v in memory.items()}},
                    ratio=ratio, notes=notes)
  print(json.dumps({"memory": memory, "ratio": ratio}, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
