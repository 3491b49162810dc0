"""Time to the first training call of every method's trainer, unrolled host loop vs scan.

Each config runs as a user runs it (`python -m medda_jax.train --config=...`) in a fresh
workdir, and is stopped (SIGKILL) as soon as its `timing.json` (medda_jax.engine.timing)
records the first finished training call. Per config, in this order:

  host, cold    engine.inner_loop=host, an empty XLA compilation cache; also builds the
                config's demo data when it is not cached yet (reported, not compared)
  host          the same again: data cached, compilation cache empty
  scan          engine.inner_loop=scan, compilation cache empty
  scan, warm    the same again with the cache the scan run filled: what a rerun, a
                resumed run or a second seed with the same shapes costs

Each figure is the run's `first_call_s` (process start to the first finished call,
loading the data included) and `compile_s` (seconds in JAX's tracing and lowering and
XLA's compilation until then). The ratio is host over scan per config.

  python benchmarks/first_step.py --cpu                       # every method's demo config
  python benchmarks/first_step.py --configs metamedseg.py:demo,fda.py:demo
  python benchmarks/first_step.py --cpu --runs scan                 # the scan row alone
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "first_step"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS = ("metamedseg.py:demo", "transfer.py:demo", "wgan_synth.py:demo",
         "stargan.py:digits_demo", "cyclegan.py:demo", "synthmix.py:demo", "fda.py:demo",
         "catenorm.py:demo", "avagrad.py:demo", "aiva.py:demo")
RUNS = (("host, cold", "host", "fresh"), ("host", "host", "fresh"),
        ("scan", "scan", "fresh"), ("scan, warm", "scan", "same"))
RUN_NAMES = tuple(label.replace(", ", "_") for label, _, _ in RUNS)  # --runs names: host_cold, ...


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--configs", default=",".join(DEMOS),
                 help="comma list of configs/<file>:<variant> (default: every method's demo)")
  p.add_argument("--timeout", type=float, default=900,
                 help="seconds one run may take to reach its first call")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  p.add_argument("--runs", default=",".join(RUN_NAMES),
                 help=f"comma list of {', '.join(RUN_NAMES)} (scan_warm needs scan before it)")
  return p.parse_args()


def first_call(config: str, inner_loop: str, cache_dir: str, env: dict, timeout: float) -> dict:
  """Runs the trainer until timing.json holds its first call; returns that record."""
  workdir = tempfile.mkdtemp(prefix="first_step_")
  timing = os.path.join(workdir, "timing.json")
  cmd = [sys.executable, "-m", "medda_jax.train", f"--config=configs/{config}",
         f"--workdir={workdir}", f"--config.engine.inner_loop={inner_loop}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=dict(env, JAX_COMPILATION_CACHE_DIR=cache_dir))
  deadline = time.time() + timeout
  record = None
  try:
    while time.time() < deadline:
      if os.path.exists(timing):
        record = json.loads(open(timing).read())
        if record.get("first_call_s") is not None:
          break
      if proc.poll() is not None:
        break
      time.sleep(0.2)
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    shutil.rmtree(workdir, ignore_errors=True)
  if record is None or record.get("first_call_s") is None:
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    raise RuntimeError(f"{config} ({inner_loop}) reached no training call: {tail}")
  return record


def main():
  args = parse_args()
  chosen = args.runs.split(",")
  unknown = sorted(set(chosen) - set(RUN_NAMES))
  if unknown or ("scan_warm" in chosen and "scan" not in chosen):
    raise SystemExit(f"--runs: {args.runs!r}: names from {', '.join(RUN_NAMES)}, scan_warm "
                     "with scan")
  platform, device = common.start(args)
  env = dict(os.environ)
  if args.cpu:
    env["JAX_PLATFORMS"] = "cpu"
  results = {}
  ratio = {}
  print(f"time to the first training call on {platform}: {device.get('name', device)}")
  for config in args.configs.split(","):
    caches, rows = [], {}
    for name, (label, inner_loop, which_cache) in zip(RUN_NAMES, RUNS):
      if name not in chosen:
        continue
      if which_cache == "fresh":
        caches.append(tempfile.mkdtemp(prefix="first_step_xla_"))
      try:
        r = first_call(config, inner_loop, caches[-1], env, args.timeout)
        rows[label] = {k: r[k] for k in ("first_call_s", "compile_s", "trace_s", "lower_s",
                                         "xla_compile_s", "compilation_cache_hits",
                                         "compilation_cache_misses")}
        print(f"  {config:24s} {label:11s} first call {r['first_call_s']:7.1f} s, "
              f"compiling {r['compile_s']:7.1f} s, compiled {r['compilation_cache_misses']}, "
              f"loaded {r['compilation_cache_hits']}",
              flush=True)
      except RuntimeError as e:
        rows[label] = common.error_text(e)
        print(f"  {config:24s} {label:11s} {rows[label]}", flush=True)
    results[config] = rows
    if all(isinstance(rows.get(k), dict) for k in ("host", "scan")):
      ratio[config] = {
          "first_call_host_over_scan": rows["host"]["first_call_s"] / rows["scan"]["first_call_s"],
          "compile_host_over_scan": rows["host"]["compile_s"] / rows["scan"]["compile_s"]}
    for cache in caches:
      shutil.rmtree(cache, ignore_errors=True)
  out = args.out or common.result_path(BENCHMARK, platform, device)
  common.write_json(
      out, benchmark=BENCHMARK, platform=platform, device=device,
      shapes={"configs": args.configs.split(","), "runs": chosen}, results=results, ratio=ratio,
      notes=["first_call_s: process start to the first finished training call (JAX start-up "
             "and data loading included); compile_s: JAX tracing + lowering + XLA compilation "
             "until then, from jax.monitoring events (medda_jax.engine.timing).",
             "'host, cold' also builds demo data that is not cached yet; 'host' and 'scan' "
             "start with an empty XLA compilation cache; 'scan, warm' reuses the scan run's."])
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
