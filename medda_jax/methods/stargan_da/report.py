"""The result tables of StarGAN + CyCADA: internal, external and adapted AUC per pair with
their percentile bootstrap CIs, the paired test of adapted against external, and the
paper's form of interval (mean ± 1.96·sd/√B) under its own heading; the averages beside
the paper's numbers on the paper's data.
"""

from __future__ import annotations

from medda_jax import metrics
from medda_jax.data import images as user_images


# The paper's averages over its 3 digit domains (MNIST, MNIST-M, USPS; 200K iterations) and
# 4 chest X-ray sites, for the table's reference column (spec (e)).
PAPER = {"digits": {"internal": 99.87, "external": 91.85, "adapted": 94.66,
                    "relative_gain": 3.04, "average_salvage": 35.0, "median_salvage": 83.16},
         "cxr": {"internal": 78.07, "external": 71.43, "adapted": 73.07,
                 "relative_gain": 2.42, "average_salvage": 25.0, "median_salvage": 20.98}}


def summarise(pairs: dict, internal: dict) -> dict:
  """The paper's averages (`metrics.pair_summary`), in %."""
  keys = [(p["source"], p["target"]) for p in pairs.values()]
  sm = metrics.pair_summary(
      {d: v["auc"] for d, v in internal.items()},
      {k: pairs["->".join(k)]["external"]["auc"] for k in keys},
      {k: pairs["->".join(k)]["adapted"]["auc"] for k in keys})
  return {"internal": sm.mean_internal, "external": sm.mean_external,
          "adapted": sm.mean_adapted, "absolute_gain": sm.mean_abs_gain,
          "relative_gain": 100 * sm.mean_relative_change,
          "relative_loss": 100 * sm.relative_loss,
          "average_salvage": 100 * sm.average_salvage,
          "median_salvage": 100 * sm.median_salvage, "pairs": len(keys)}


def interval_text(v: dict) -> str:
  """The AUC of the whole test set with its 95 % percentile bootstrap CI."""
  lo, hi = v["ci"]
  return f"{v['auc']:.2f} [{lo:.2f}, {hi:.2f}]"


def mean_interval_text(v: dict) -> str:
  """The paper's form: the bootstrap mean with mean ± 1.96·sd/√B (not a CI of the AUC)."""
  lo, hi = v["mean_interval"]
  return f"{v['bootstrap_mean']:.2f} ({lo:.2f}–{hi:.2f})"


def p_text(p: float) -> str:
  return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def tables_markdown(c, label: str, data_desc: str, internal: dict, pairs: dict, summary: dict,
                    spread: list[dict], classes: tuple[str, ...] = ()) -> str:
  """The results page; `classes` (a user domain's class names) replaces the paper's
  reference column and task description, which belong to its own data."""
  paper = None if classes else PAPER[c.data.kind]
  if classes:
    auc_kind = (f"binary AUC ({classes[1]} against {classes[0]})" if len(classes) == 2 else
                f"macro one-vs-rest AUC over {len(classes)} classes {list(classes)}")
  else:
    auc_kind = ("macro one-vs-rest AUC over 10 digits" if c.data.kind == "digits"
                else "binary opacity AUC")
  names = [user_images.parse_domain(d)[0] for d in c.data.domains]  # as domain_names(c)
  b = c.eval.bootstrap
  n = (f"{c.eval.bootstrap_size} test images" if c.eval.bootstrap_size
       else "the test set's size")
  out = ["# StarGAN + CyCADA semantic loss: AUC (%) before and after adaptation", "",
         f"**{label}**", "", f"Data: {data_desc}.", "",
         f"{auc_kind} of the whole test set, [95% CI] = the 2.5 / 97.5 percentiles of its "
         f"AUC over B = {b} bootstrap replicates of the test set's own size. Gain = adapted − "
         "external with the percentile CI of the paired replicate differences; p = two-sided "
         "paired bootstrap p-value of no gain (same resampled images for both models). "
         f"StarGAN: {c.stargan.d_iters} critic iterations per pair (paper: 200,000).", "",
         "## Per ordered pair", "",
         "| S → T | internal(T) | external (B_S on T) | adapted | gain [95% CI] | p | "
         "relative | salvage |",
         "|---|---|---|---|---|---|---|---|"]
  for p in pairs.values():
    glo, ghi = p["gain_ci"]
    out.append(f"| {p['source']} → {p['target']} | {interval_text(internal[p['target']])} | "
               f"{interval_text(p['external'])} | {interval_text(p['adapted'])} | "
               f"{p['gain']:+.2f} [{glo:+.2f}, {ghi:+.2f}] | {p_text(p['p_value'])} | "
               f"{p['relative_change']:+.2f}% | {p['salvage']:.1f}% |")
  out += ["", "## The paper's form of interval", "",
          f"The mean over B = {b} bootstrap replicates of {n} (mean ± "
          "1.96·sd/√B): the Monte-Carlo error of the bootstrap mean, which shrinks as B grows, "
          "not the uncertainty of the AUC. The paper's very narrow intervals (e.g. 91.82–91.88) "
          "have this form; shown only to compare with them.", "",
          "| S → T | internal(T) | external | adapted |", "|---|---|---|---|"]
  for p in pairs.values():
    out.append(f"| {p['source']} → {p['target']} | "
               f"{mean_interval_text(internal[p['target']])} | "
               f"{mean_interval_text(p['external'])} | {mean_interval_text(p['adapted'])} |")
  out += ["", "Internal AUC per domain: " + ", ".join(
      f"{d} {interval_text(v)}" for d, v in internal.items()), "",
      "## Averages", ""]
  out += (["| quantity | this run | paper |", "|---|---|---|"] if paper else
          ["| quantity | this run |", "|---|---|"])
  rows = [("mean internal AUC", "internal", ""), ("mean external AUC", "external", ""),
          ("mean adapted AUC", "adapted", ""), ("mean relative gain", "relative_gain", "%"),
          ("average salvage", "average_salvage", "%"), ("median salvage", "median_salvage", "%")]
  for title, key, unit in rows:
    ref = f" {paper[key]:.2f}{unit} |" if paper else ""
    out.append(f"| {title} | {summary[key]:.2f}{unit} |{ref}")
  if spread:
    out += ["", "## Domain spread (one classifier on pooled data)", "",
            "| pooled fraction | images | " + " | ".join(f"AUC {d}" for d in names)
            + f" | spread (Var, ddof {c.eval.spread_ddof}) | pooled-test AUC |",
            "|---|---|" + "---|" * (len(names) + 2)]
    for row in spread:
      out.append(f"| {100 * row['fraction']:g}% | {row['train_images']} | "
                 + " | ".join(f"{row['auc'][d]:.2f}" for d in names)
                 + f" | {row['spread']:.2f} | {row['pooled_auc']:.2f} |")
  return "\n".join(out) + "\n"
