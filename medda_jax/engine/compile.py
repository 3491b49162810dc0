"""The one place a step is compiled: donation of the state, explicit shardings; and how a
model's initialisation is compiled (`compile_init`).

Every step builder (supervised, GAN, meta) hands its `step(state, batch) -> (state,
metrics)` to `compile_step`. On an accelerator the state is donated (its memory reused in
place); on the CPU it is not (`donates_by_default`). Without a mesh placement is left to
JAX (one device, or a serial stage each process runs for itself). With a mesh the state
and the metrics are replicated and the batch is sharded over `batch_axis` on dimension
`batch_dim` (1 for a chunk of steps [steps_per_call, batch, ...], 2 for the GAN engine's
[steps_per_call, n_critic, batch, ...]); inputs must already sit that way
(`parallel.replicate`, `parallel.global_batch`).
"""

from __future__ import annotations

import os
from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medda_jax import parallel


def batch_sharding(mesh: Mesh, batch_axis: str | None = "data", batch_dim: int = 0):
  """Leading dimensions before `batch_dim` unsharded, `batch_dim` over `batch_axis`
  (None: replicated)."""
  return NamedSharding(mesh, P(*([None] * batch_dim), batch_axis))


def donates_by_default() -> bool:
  """Whether a compiled step donates its state (argument 0) unless told: on accelerators,
  where donation lets XLA update the state in the memory it arrived in; not on the CPU,
  where memory is ample and a donated state made steps with large kernels slower (one core,
  in turn in one process: the 5-level U-Net step 171 against 143 ms, CateNorm's iteration
  898 against 860 ms; MetaMedSeg's U-Net and the WGAN-GP cycle level)."""
  return jax.default_backend() != "cpu"


def compile_step(step: Callable, mesh: Mesh | None = None, *, batch_axis: str | None = "data",
                 batch_dim: int = 0, donate: bool | None = None) -> Callable:
  """`jax.jit(step)` with the state (argument 0) donated where `donate` (default:
  `donates_by_default()`) and, given a mesh, explicit in/out shardings: state replicated,
  batch sharded, metrics replicated."""
  donate_argnums = (0,) if (donates_by_default() if donate is None else donate) else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=donate_argnums,
                 in_shardings=(replicated, batch_sharding(mesh, batch_axis, batch_dim)),
                 out_shardings=(replicated, replicated))


# Flax draws every parameter through its own threefry loop, and XLA:CPU's LLVM at its default
# -O3 spends up to 1.6 s on each loop body: SIFA's 267 parameters took 17.9 s to compile, at
# LLVM -O1 5.5 s, with the same bits and the same floats made of them (tests/
# test_compile_init.py; -O0 changes the floats' last bits). Only for the CPU, and only where
# XLA_FLAGS sets no level of its own (the test suite's 0): the GPU defaults stay as they are.
INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def init_options() -> dict | None:
  """`INIT_OPTIONS` on the CPU, unless XLA_FLAGS names an optimisation level; else None."""
  if jax.default_backend() != "cpu":
    return None
  if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
    return None
  return INIT_OPTIONS


def compile_init(init: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(init)` for a model's parameter initialisation, compiled with `init_options()`
  (on the CPU a third of the compile time, the same parameters)."""
  return jax.jit(init, compiler_options=init_options(), **jit_kwargs)
