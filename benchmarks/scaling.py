"""Scaling over devices: one MetaMedSeg meta-iteration and one U-Net training step on 1, 2,
4 and 8 devices of one process (JAX only: scaling is JAX's own story).

* meta-iteration (strong scaling): L = 8 tasks of K shots on a ('task', 'data') mesh from
  `parallel.task_mesh`, each device adapting L / n tasks under shard_map (inner loop: scan,
  vmap over a device's tasks), then the AW Reptile update. Ideal: time / n. Then the
  paper's L = 5 on the largest count: the gcd task axis (1 for 8 devices: every device
  adapts all five) against the meta-batch padded to one task per device.
* U-Net step (weak scaling): a data-parallel Adam step of MetaMedSeg's U-Net with a fixed
  per-device batch, the global batch sharded on the 'data' axis, parameters replicated.
  Ideal: images/s x n.

Efficiency = measured speed-up / n. On the CPU the devices are simulated
(`JAX_NUM_CPU_DEVICES`): they all share the same cores, so the ideal is *flat* total
throughput and the figures show the cost of partitioning, not a speed-up. On GPUs or TPU
chips they are real.

  python benchmarks/scaling.py            # every visible accelerator, else 8 CPU devices
  python benchmarks/scaling.py --cpu      # simulated CPU devices
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cpu", action="store_true", help="simulated CPU devices")
  p.add_argument("--devices", default="1,2,4,8", help="device counts to measure")
  p.add_argument("--size", type=int, default=None, help="image side (64 on CPU, 256 else)")
  p.add_argument("--base", type=int, default=None, help="U-Net width (8 on CPU, 32 else)")
  p.add_argument("--shots", type=int, default=None, help="K per task (4 on CPU, 15 else)")
  p.add_argument("--per-device-batch", type=int, default=None, help="U-Net step (4 CPU, 16)")
  p.add_argument("--repeats", type=int, default=5)
  return p.parse_args()


def main():
  args = parse_args()
  counts = [int(n) for n in args.devices.split(",")]
  os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(max(counts)))  # only the CPU backend
  if args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import jax.numpy as jnp
  import numpy as np

  from medda_jax import losses, parallel
  from medda_jax.engine.adapt import AdaptConfig
  from medda_jax.engine.meta import MetaState, build_meta_step
  from medda_jax.engine.supervised import TrainState, build_train_chunk, supervised_loss
  from medda_jax.models.unet import UNet
  from medda_jax.optim import coupled_adam, reptile

  platform = "cpu" if jax.default_backend() == "cpu" else jax.default_backend()
  cpu = platform == "cpu"
  size = args.size or (64 if cpu else 256)
  base = args.base or (8 if cpu else 32)
  shots = args.shots or (4 if cpu else 15)
  per_device = args.per_device_batch or (4 if cpu else 16)
  tasks = 8
  inner_epochs = 1 if cpu else 2
  dtype = jnp.float32 if cpu else jnp.bfloat16
  counts = [n for n in counts if n <= jax.device_count()]
  model = UNet(features=base, dtype=dtype)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
  rng = np.random.default_rng(0)

  def images(*shape):
    return rng.normal(size=shape + (size, size, 1)).astype(np.float32)

  meta_batch = {"images": images(tasks, shots),
                "masks": (images(tasks, shots) > 0.5).astype(np.float32),
                "valid": np.ones((tasks, shots), bool)}
  adapt_cfg = AdaptConfig(0.01, 0.003, inner_epochs, 0.7, 2)
  meta_tx = reptile(0.01, tasks, rule="aw")
  results = {}
  for n in counts:
    devices = jax.devices()[:n]
    entry = {}
    # --- meta-iteration, strong scaling over the task axis
    mesh = parallel.task_mesh(tasks, devices)
    step = build_meta_step(model.apply, losses.SEGMENTATION_LOSSES["bce"], adapt_cfg, meta_tx,
                           mesh=mesh, inner_loop="scan", task_parallelism="vmap", donate=False)
    state = parallel.replicate(MetaState.create(params, meta_tx, jax.random.PRNGKey(1)), mesh)
    batch = parallel.global_batch(meta_batch, mesh, "task")
    timing = common.time_repeats(functools.partial(step, state, batch), common.jax_block, warmup=1,
                                 repeats=args.repeats, iters=1)
    entry["meta_iteration"] = {"mesh": dict(mesh.shape), "seconds": timing["seconds_per_call"],
                               "tasks_per_s": tasks / timing["seconds_per_call"],
                               "compile_and_first_call_s": timing["warmup_seconds"]}
    # --- U-Net step, weak scaling over the data axis
    mesh = parallel.data_mesh(devices)
    tx = coupled_adam(1e-3, 3e-5)
    chunk = build_train_chunk(supervised_loss(model.apply, losses.SEGMENTATION_LOSSES["bce"]),
                              tx, "scan", mesh=mesh)
    global_batch = per_device * n
    data = parallel.global_batch({"x": images(1, global_batch), "y": images(1, global_batch) > 0},
                                 mesh, "data", batch_dim=1)
    fresh = jax.tree.map(jnp.copy, params)  # the step donates its state
    holder = {"state": parallel.replicate(TrainState.create(fresh, tx), mesh),
              "x": data["x"], "y": data["y"].astype(jnp.float32), "chunk": chunk}

    def unet_step(holder=holder):
      holder["state"], metrics = holder["chunk"](holder["state"],
                                                 {"images": holder["x"], "masks": holder["y"]})
      return metrics

    timing = common.time_repeats(unet_step, common.jax_block, warmup=2, repeats=args.repeats,
                                 iters=3)
    entry["unet_step"] = {"global_batch": global_batch, "seconds": timing["seconds_per_call"],
                          "images_per_s": global_batch / timing["seconds_per_call"],
                          "images_per_s_per_device":
                              per_device / timing["seconds_per_call"]}
    results[str(n)] = entry
    print(f"{n} device(s): meta-iteration {entry['meta_iteration']['seconds'] * 1e3:.0f} ms, "
          f"U-Net step {entry['unet_step']['images_per_s']:.1f} images/s", flush=True)

  # --- the paper's L = 5 tasks on the largest device count: the gcd task axis (every
  # device adapts all five) against the meta-batch padded to one task per device
  n, odd = counts[-1], 5
  odd_tx = reptile(0.01, odd, rule="aw")
  odd_batch = {k: v[:odd] for k, v in meta_batch.items()}
  padding = {"tasks": odd, "devices": n}
  for name, padded in (("gcd_task_axis", odd), ("padded", parallel.padded_tasks(odd, n))):
    mesh = parallel.task_mesh(padded, jax.devices()[:n])
    step = build_meta_step(model.apply, losses.SEGMENTATION_LOSSES["bce"], adapt_cfg, odd_tx,
                           mesh=mesh, inner_loop="scan", task_parallelism="vmap",
                           num_tasks=odd, donate=False)
    state = parallel.replicate(MetaState.create(params, odd_tx, jax.random.PRNGKey(1)), mesh)
    batch = parallel.global_batch(parallel.pad_tasks(odd_batch, padded), mesh, "task")
    timing = common.time_repeats(functools.partial(step, state, batch), common.jax_block,
                                 warmup=1, repeats=args.repeats, iters=1)
    padding[name] = {"mesh": dict(mesh.shape), "meta_batch": padded,
                     "seconds": timing["seconds_per_call"]}
  padding["speedup"] = padding["gcd_task_axis"]["seconds"] / padding["padded"]["seconds"]
  print(f"{odd} tasks on {n} device(s): gcd task axis "
        f"{padding['gcd_task_axis']['seconds'] * 1e3:.0f} ms, padded to "
        f"{padding['padded']['meta_batch']} {padding['padded']['seconds'] * 1e3:.0f} ms",
        flush=True)

  one = results[str(counts[0])]
  for n in counts:
    meta, unet = results[str(n)]["meta_iteration"], results[str(n)]["unet_step"]
    scale = n / counts[0]
    meta["speedup"] = one["meta_iteration"]["seconds"] / meta["seconds"]
    meta["efficiency"] = meta["speedup"] / scale
    unet["speedup"] = unet["images_per_s"] / one["unet_step"]["images_per_s"]
    unet["efficiency"] = unet["speedup"] / scale

  device = {"name": (f"CPU: {common.cpu_model()} ({common.usable_cores()} cores), "
                     f"{jax.device_count()} simulated devices") if cpu
            else f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "cpu": common.cpu_model(), "cpu_cores": common.usable_cores(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_at_start": common.load_average(),
            "jax_devices": [str(d) for d in jax.devices()]}
  notes = ["JAX only; efficiency = speed-up over the smallest count / device ratio."]
  if cpu:
    notes.insert(0, "Simulated CPU devices share the machine's cores: the ideal is flat total "
                    "throughput (efficiency 1/n), so these figures measure partitioning "
                    "overhead, not scaling. Run on GPUs or TPU chips for real scaling.")
  tag = "cpu" if cpu else f"{platform}_{common.device_slug(device)}"
  path = os.path.join(common.RESULTS_DIR, f"scaling_{tag}.json")
  common.write_json(path, benchmark="scaling", platform="cpu" if cpu else "gpu", device=device,
                    shapes={"image": [size, size, 1], "unet_base": base, "tasks": tasks,
                            "shots": shots, "inner_epochs": inner_epochs,
                            "unet_per_device_batch": per_device, "dtype": str(dtype.dtype)
                            if hasattr(dtype, "dtype") else jnp.dtype(dtype).name},
                    results=results, padding=padding, ratio={}, notes=notes)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
