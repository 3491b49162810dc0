"""The meta step on 1 device and on 8 simulated CPU devices (task axis sharded with
shard_map) gives the same parameters."""

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from medda_jax import losses, parallel
    from medda_jax.engine.adapt import AdaptConfig
    from medda_jax.engine.meta import MetaState, build_meta_step
    from medda_jax.models.unet import UNet
    from medda_jax.optim import reptile

    assert jax.device_count() == 8, jax.devices()
    L, K, S = 8, 3, 8
    model = UNet(features=2, levels=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, S, S, 1)))
    rng = np.random.default_rng(0)
    batch = dict(images=rng.normal(size=(L, K, S, S, 1)).astype(np.float32),
                 masks=(rng.random((L, K, S, S, 1)) > 0.5).astype(np.float32),
                 valid=np.ones((L, K), bool))
    batch["valid"][3, 2:] = False
    cfg = AdaptConfig(0.01, 0.003, 2, 0.7, 1)
    results = {}
    for name, mesh in (("one_device", parallel.task_mesh(L, jax.devices()[:1])),
                       ("eight_devices", parallel.task_mesh(L))):
      tx = reptile(0.5, L, rule="idw")
      step = build_meta_step(model.apply, losses.bce, cfg, tx, mesh=mesh)
      state = MetaState.create(jax.tree.map(jnp.array, params), tx, jax.random.PRNGKey(1))
      for _ in range(2):
        state, metrics = step(state, parallel.global_batch(batch, mesh, "task"))
      if name == "eight_devices":
        assert mesh.shape["task"] == 8
        assert metrics["task_losses"].sharding.is_fully_replicated
      results[name] = (jax.device_get(state.params), np.asarray(metrics["task_losses"]))
    a, b = results["one_device"], results["eight_devices"]
    # A conv bias followed by instance norm has a zero gradient up to rounding noise, and
    # Adam turns that noise into full-size steps of either sign: it is compared only to
    # its step size. Every other parameter must agree closely.
    for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(a[0])[0],
                                 jax.tree_util.tree_flatten_with_path(b[0])[0]):
      key = jax.tree_util.keystr(path)
      if "DoubleConv" in key and "bias" in key:
        meta_steps, inner_steps, lr, beta = 2, 2 * K, 0.01, 0.5
        assert np.abs(x - y).max() <= 2 * meta_steps * inner_steps * lr * beta, key
      else:
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    moved = max(float(np.abs(x - y).max()) for x, y in
                zip(jax.tree.leaves(a[0]), jax.tree.leaves(jax.device_get(params))))
    assert moved > 1e-3, moved  # the meta step really changed the parameters
    print("OK")
""")


def test_one_device_equals_eight_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=600, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]
