"""engine.trainer.fit against a plain loop (train a call, evaluate, keep the best, stop
after `patience` evaluations without improvement), and a run killed mid-training that
resumes from its checkpoint to the same best variables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.trainer import fit

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 2, 4, 3)).astype(np.float32)  # [calls, steps_per_call, batch, 3]
Y = RNG.integers(0, 2, size=(6, 2, 4)).astype(np.int32)
VAL_X = RNG.normal(size=(10, 3)).astype(np.float32)
VAL_Y = RNG.integers(0, 2, size=10).astype(np.int32)


def loss_fn(params, model_state, batch, rng):
  logits = batch["x"] @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), (
      model_state, {})


def score(variables):
  """Validation accuracy, coarse on purpose: ties happen."""
  p = variables["params"]
  return float(np.mean(np.argmax(VAL_X @ np.asarray(p["w"]) + np.asarray(p["b"]), -1) == VAL_Y))


TX = optax.sgd(0.5)
CHUNK = build_train_chunk(loss_fn, TX, "host")


def fresh():
  return TrainState.create({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, TX)


def plain(every, patience, keep_ties):
  """The obvious loop."""
  state, best, best_score, waited, evaluations = fresh(), None, -1.0, 0, 0
  for k in range(len(X)):
    state, _ = CHUNK(state, {"x": X[k], "y": Y[k]})
    if (k + 1) % every:
      continue
    current = jax.device_get({"params": state.params})
    s = score(current)
    evaluations += 1
    if s > best_score or (keep_ties and s == best_score):
      best, best_score, waited = current, s, 0
    else:
      waited += 1
      if patience is not None and waited >= patience:
        break
  return best, best_score, evaluations


def run(every, patience, keep_ties, **kwargs):
  return fit("test", fresh(), CHUNK, lambda k: {"x": X[k], "y": Y[k]}, total_calls=len(X),
             steps_per_call=2, evaluate=score, every=every, patience=patience,
             keep_ties=keep_ties, **kwargs)


@pytest.mark.parametrize("every, patience, keep_ties", [(1, None, True), (1, 1, False),
                                                        (2, 2, False)])
def test_fit_matches_a_plain_loop(every, patience, keep_ties):
  want_best, want_score, want_evals = plain(every, patience, keep_ties)
  got = run(every, patience, keep_ties)
  assert got.best_score == want_score and got.evaluations == want_evals
  for key in ("w", "b"):
    np.testing.assert_allclose(got.best["params"][key], want_best["params"][key], rtol=1e-6)


def test_killed_fit_resumes_to_the_same_best(tmp_path):
  want = run(1, None, True)
  calls = []

  def dying(variables):  # the process dies during the fourth evaluation
    calls.append(1)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return score(variables)

  with pytest.raises(KeyboardInterrupt):
    fit("test", fresh(), CHUNK, lambda k: {"x": X[k], "y": Y[k]}, total_calls=len(X),
        steps_per_call=2, evaluate=dying, every=1, keep_ties=True,
        checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
  evaluated = []
  got = run(1, None, True, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
  got_calls = fit("test", fresh(), CHUNK, lambda k: {"x": X[k], "y": Y[k]},
                  total_calls=len(X), steps_per_call=2,
                  evaluate=lambda v: evaluated.append(1) or score(v), every=1,
                  keep_ties=True, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
  assert not evaluated  # a finished run trains and evaluates nothing again
  for result in (got, got_calls):
    assert result.best_score == want.best_score and result.evaluations == want.evaluations
    for key in ("w", "b"):
      np.testing.assert_allclose(result.best["params"][key], want.best["params"][key],
                                 rtol=1e-6)


def test_a_stopped_fit_is_not_trained_on_after_a_resume(tmp_path):
  first = run(1, 1, False, checkpoint_dir=tmp_path / "ckpt")
  assert first.evaluations < len(X)  # it stopped early (the fixture data make sure)
  evaluated = []
  again = fit("test", fresh(), CHUNK, lambda k: {"x": X[k], "y": Y[k]}, total_calls=len(X),
              steps_per_call=2, evaluate=lambda v: evaluated.append(1) or score(v), every=1,
              patience=1, checkpoint_dir=tmp_path / "ckpt")
  assert not evaluated and again.evaluations == first.evaluations
  assert again.best_score == first.best_score
