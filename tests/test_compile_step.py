"""compile_step: the supervised and GAN chunks on a 4-device mesh get their batches
sharded over `data` (on the batch dimension) and their state replicated, and compute what
the same chunks compute without a mesh."""

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from medda_jax import parallel
    from medda_jax.engine import gan
    from medda_jax.engine.supervised import TrainState, build_train_chunk
    assert jax.device_count() == 4, jax.devices()
    mesh = parallel.data_mesh()
    SPECS = []

    def record(x):  # the rows of the batch each device holds, seen at compile time
      shape = x.shape
      jax.debug.inspect_array_sharding(
          x, callback=lambda s: SPECS.append(s.shard_shape(shape)[0] / shape[0]))

    def loss_fn(params, model_state, batch, rng):
      record(batch["x"])
      pred = batch["x"] @ params["w"]
      return jnp.mean((pred - batch["y"]) ** 2), (model_state, {})

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    batches = {"x": rng.normal(size=(2, 8, 3)).astype(np.float32),
               "y": rng.normal(size=(2, 8, 2)).astype(np.float32)}
    tx = optax.adam(0.1)
    fresh = lambda: TrainState.create(jax.tree.map(jnp.array, params), tx)
    plain, _ = build_train_chunk(loss_fn, tx, "scan")(fresh(), batches)
    SPECS.clear()
    # host batches and a fresh state: the compiled chunk itself places them
    sharded, metrics = build_train_chunk(loss_fn, tx, "scan", mesh=mesh)(fresh(), batches)
    # inside the scan the step sees one [batch, 3] slice, a quarter on each device
    assert SPECS and set(SPECS) == {0.25}, SPECS
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
    assert metrics["loss"].sharding.is_fully_replicated
    np.testing.assert_allclose(sharded.params["w"], plain.params["w"], rtol=1e-5, atol=1e-6)

    # GAN engine: batches [steps_per_call, n_critic, batch, ...] sharded on dimension 2.
    def critic_loss(p, s, batch, rng):
      record(batch["x"])
      return jnp.mean((batch["x"] @ p["d"]) ** 2) + jnp.sum(p["g"]) * 0, (s, {})

    def generator_loss(p, s, batch, rng):
      return jnp.mean((batch["x"] @ p["g"] - 1.0) ** 2), (s, {})

    gp = {"g": params["w"], "d": params["w"] * 0.5}
    gbatches = {"x": rng.normal(size=(2, 2, 8, 3)).astype(np.float32)}
    make = lambda: gan.GANState.create(jax.tree.map(jnp.array, gp), {"g": {}, "d": {}}, tx, tx,
                                       jax.random.PRNGKey(0))
    ref, _ = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=2)(make(), gbatches)
    SPECS.clear()
    out, _ = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=2, mesh=mesh)(
        parallel.replicate(make(), mesh), gan.shard_batches(gbatches, mesh))
    assert SPECS and set(SPECS) == {0.25}, SPECS
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(out.params))
    for k in ("g", "d"):
      np.testing.assert_allclose(out.params[k], ref.params[k], rtol=1e-5, atol=1e-6)
    print("OK")
""")


def test_chunks_on_a_mesh_shard_batches_and_match_one_device():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


def test_a_step_donates_its_state_on_accelerators_only():
  import jax
  import jax.numpy as jnp

  from medda_jax.engine import compile as compile_lib
  step = lambda state, batch: (state * 2 + batch, {"loss": jnp.sum(state)})
  assert compile_lib.donates_by_default() == (jax.default_backend() != "cpu")
  for donate in (None, True, False):
    state = jnp.arange(4.0)
    new, _ = compile_lib.compile_step(step, donate=donate)(state, jnp.ones(4))
    donated = compile_lib.donates_by_default() if donate is None else donate
    assert state.is_deleted() == donated, donate
    assert new.tolist() == [1.0, 3.0, 5.0, 7.0]
