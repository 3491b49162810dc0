"""The experiment's figures: segmentation overlays on target test slices (ground truth and
each method's prediction) and, per method, a grid of the translations; with SynthMix also
the masks, the aligned mixes and the Inspector's domain maps."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from medda_jax import plots
from medda_jax.methods.sifa.paper import mix, upsample_masks

_COLOURS = np.array([[0, 0, 0, 0], [1.0, 0.2, 0.2, 0.6], [0.2, 0.9, 0.2, 0.6],
                     [0.2, 0.4, 1.0, 0.6], [1.0, 0.9, 0.1, 0.6]])


def _figure_dir(workdir) -> pathlib.Path:
  path = pathlib.Path(workdir) / "figures"
  path.mkdir(parents=True, exist_ok=True)
  return path


def _name(key: str) -> str:
  return key.replace("/", "_").replace("->", "_to_")


def save_predictions(workdir, key: str, target, preds: dict, n: int) -> None:
  """Keeps `n` slices of the first test volume (those with the most foreground) with the
  run's prediction, for the overlay figure drawn once every run is done."""
  volume = target.test[0]
  fg = (volume.label > 0).reshape(len(volume.label), -1).sum(1)
  picks = np.sort(np.argsort(-fg, kind="stable")[:n])
  np.savez_compressed(_figure_dir(workdir) / f"{_name(key)}.npz", image=volume.image[picks],
                      label=volume.label[picks], pred=preds[volume.name][picks])


def overlay_figure(workdir, src: str, trg: str, methods: list, seed: int, demo: bool) -> None:
  plt = plots.pyplot()
  runs = {}
  for method in methods:
    path = _figure_dir(workdir) / f"{_name(f'{src}->{trg}/{method}/seed{seed}')}.npz"
    if path.exists():
      runs[method] = np.load(path)
  if not runs:
    return
  first = next(iter(runs.values()))
  panels = [("ground truth", first["label"])] + [(m, r["pred"]) for m, r in runs.items()]
  n = len(first["image"])
  fig, axes = plt.subplots(n, len(panels), figsize=(2.0 * len(panels), 2.0 * n),
                           squeeze=False)
  for r in range(n):
    for col, (title, labels) in enumerate(panels):
      ax = axes[r, col]
      ax.imshow(first["image"][r], cmap="gray", vmin=-1, vmax=1)
      ax.imshow(_COLOURS[np.clip(labels[r], 0, 4)], interpolation="nearest")
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=9)
  fig.suptitle(f"{src} -> {trg}, seed {seed}: target test slices"
               + (" (demo data)" if demo else ""), fontsize=10)
  fig.tight_layout()
  fig.savefig(pathlib.Path(workdir) / f"segmentation_{src}_to_{trg}.png", dpi=100)
  plt.close(fig)


def translation_grid(workdir, key: str, model, state, source, target, n: int,
                     demo: bool) -> None:
  """Rows: source, G(source), target, U(E(target)); with SynthMix the mask m, S_mix, T_mix
  and the Inspector's map (sigmoid, 1 = target) on S_mix, T_mix and the real mix."""
  nets, params = model.nets, state.params
  x_s = np.asarray(source.images[np.linspace(0, len(source.images) - 1, n).astype(int)])
  x_t = np.asarray(target.images[np.linspace(0, len(target.images) - 1, n).astype(int)])
  enc = {"params": params["seg"]["e"], "batch_stats": state.model_state["seg"]["batch_stats"]}

  @jax.jit
  def translate(x_s, x_t):
    fake_t = nets.generator.apply({"params": params["g"]}, x_s)
    f, _ = nets.encoder.apply(enc, x_t, train=False)
    return fake_t, nets.decoder.apply({"params": params["u"]}, f, x_t, deterministic=True)

  fake_t, fake_s = translate(x_s, x_t)
  rows = {"source": x_s, "G(source)": fake_t, "target": x_t, "U(E(target))": fake_s}
  if model.synthmix:
    k = model.c.synthmix.mask_k
    m = (np.random.default_rng(0).random((n, k, k)) < model.c.synthmix.mask_ratio)
    m_up = upsample_masks(jnp.asarray(m, jnp.float32), x_s.shape[1:3])
    s_mix, t_mix = mix(m_up, fake_t, x_s), mix(m_up, x_t, fake_s)
    x_unal = mix(m_up, x_t, x_s)

    def inspect(x):
      cells, _ = nets.inspector.apply({"params": params["inspector"]}, x)
      p = upsample_masks(jax.nn.sigmoid(cells), x.shape[1:3])
      return 2.0 * p - 1.0

    rows.update({"mask m (white = target)": 2.0 * m_up - 1.0, "S_mix": s_mix,
                 "I(S_mix)": inspect(s_mix), "T_mix": t_mix, "I(T_mix)": inspect(t_mix),
                 "real mix": x_unal, "I(real mix)": inspect(x_unal)})
  plots.image_rows(pathlib.Path(workdir) / f"translations_{_name(key.split('/seed')[0])}.png",
                   {k: np.asarray(v) for k, v in rows.items()},
                   title=f"{key}: translations" + (" and SynthMix" if model.synthmix else "")
                   + (" (demo data)" if demo else ""), value_range=(-1.0, 1.0))
