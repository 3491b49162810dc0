"""The meta step on 1 device and on 8 simulated CPU devices (task axis sharded with
shard_map) gives the same parameters, also with 5 tasks padded to 8; MetaMedSeg pads its
meta-batch end to end."""

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

    def run(mesh, tasks, padded, rule):  # two meta-steps, the batch padded to `padded`
      tx = reptile(0.5, tasks, rule=rule)
      step = build_meta_step(model.apply, losses.bce, cfg, tx, mesh=mesh, num_tasks=tasks)
      state = MetaState.create(jax.tree.map(jnp.array, params), tx, jax.random.PRNGKey(1))
      sub = {k: v[:tasks] for k, v in batch.items()}
      for _ in range(2):
        state, metrics = step(state, parallel.global_batch(parallel.pad_tasks(sub, padded),
                                                           mesh, "task"))
      assert metrics["task_losses"].shape == (tasks,)
      assert metrics["task_losses"].sharding.is_fully_replicated
      return jax.device_get(state.params), np.asarray(metrics["task_losses"])

    def assert_same(a, b):
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

    assert parallel.task_mesh(L).shape["task"] == 8
    one = run(parallel.task_mesh(L, jax.devices()[:1]), L, L, "idw")
    assert_same(one, run(parallel.task_mesh(L), L, L, "idw"))
    moved = max(float(np.abs(x - y).max()) for x, y in
                zip(jax.tree.leaves(one[0]), jax.tree.leaves(jax.device_get(params))))
    assert moved > 1e-3, moved  # the meta step really changed the parameters

    # L = 5 tasks on 8 devices: padded to 8 (one task per device, three copies dropped)
    # gives the update of the 5 tasks on one device.
    assert parallel.padded_tasks(5, 8) == 8
    assert_same(run(parallel.task_mesh(5, jax.devices()[:1]), 5, 5, "aw"),
                run(parallel.task_mesh(8), 5, 8, "aw"))
    print("OK")
""")


def test_one_device_equals_eight_devices(tmp_path):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=600, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


def test_metamedseg_pads_two_tasks_over_three_devices(smoke_run, tmp_path, demo_cache):
  """The smoke config (L = 2) on 3 devices (padded to 3, one task each) ends with the
  metrics of the shared two-device smoke run (one task each, nothing padded). Only the
  meta-trained models: the scratch and transfer baselines have no meta-batch to pad."""
  from conftest import final_metrics, run_train
  workdir = tmp_path / "devices_3"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}",
                   "--config.finetune.scratch=False", "--config.transfer.enabled=False",
                   env={"JAX_NUM_CPU_DEVICES": "3", "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "meta-batch of 2 tasks padded to 3" in proc.stdout, proc.stdout
  assert "padded" not in smoke_run[1].stdout
  got, two_devices = final_metrics(workdir), final_metrics(smoke_run[0])
  assert len(got) == 12 and set(got) < set(two_devices)  # 2 rules x 3 targets x 2
  for key in got:  # IoU in [0, 1]
    assert abs(got[key] - two_devices[key]) <= 1e-2, key
