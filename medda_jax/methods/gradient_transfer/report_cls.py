"""The result table of the chest X-ray transfer (paper Table 5): mean AUC of the target
head on the target test split, per direction, budget and method, mean and std over seeds.
"""

from __future__ import annotations

import numpy as np

from medda_jax.methods.gradient_transfer.report import run_key

_NAMES = {"chexpert": "CheXpert", "chestxray14": "ChestX-ray14"}


def summarise(results: dict, c) -> dict:
  """{"source->target": {budget (str): {method: (mean, std, seeds)}}} of the mean AUC x100
  of each seed's run (std over seeds, ddof 0 as numpy's default)."""
  table: dict = {}
  for source, target in c.data.pairs:
    for budget in c.budgets:
      for method in c.methods:
        per_seed = [results[run_key("adam", source, target, budget, method, seed)]["target"]["auc"]
                    for seed in c.seeds]
        table.setdefault(f"{source}->{target}", {}).setdefault(str(budget), {})[method] = (
            float(np.mean(per_seed)), float(np.std(per_seed)), len(per_seed))
  return table


def label(c, user: dict[str, str]) -> str:
  """What the numbers are: the paper setting on the published files (protocol
  approximated where the paper is silent), a smaller setting, or a user's data (`user`:
  {name: path} of the config's user datasets)."""
  used = sorted({name for pair in c.data.pairs for name in pair})
  published = [_NAMES[n] for n in used if n in _NAMES]
  parts = []
  if published:
    parts.append(" / ".join(published) + " from their published files")
  if user:
    parts.append("your data: " + ", ".join(f"{n} ({user[n]})" for n in used if n in user))
  what = "; ".join(parts) + ("; protocol approximated (input size, epochs, split fractions, "
                             "CheXpert uncertain labels and the FTF layers are not given in "
                             "the paper, see docs/gradient_transfer.md)")
  if c.variant != "cxr":
    what = (f"variant {c.variant}: SMALL SETTING (toy sizes) - not a reproduction of the "
            "paper's numbers; " + what)
  elif user:
    what = "the paper's setting on other data - not a reproduction of its numbers; " + what
  return what


def tables_markdown(table: dict, c, label_text: str) -> str:
  columns = list(c.methods)
  out = ["### Mean AUC x100 of the target head on the target test split (paper Table 5)", "",
         f"mean ± std over {len(c.seeds)} seed(s); Adam; rows: target images used for "
         f"fine-tuning. {label_text}", ""]
  for direction, rows in table.items():
    source, target = direction.split("->")
    out += [f"#### {_NAMES.get(source, source)} -> {_NAMES.get(target, target)}", "",
            "| images | " + " | ".join(m.upper() for m in columns) + " |",
            "|---|" + "---|" * len(columns)]
    for budget, row in rows.items():
      cells = [f"{row[m][0]:.2f} ± {row[m][1]:.2f}" if np.isfinite(row[m][0]) else "n/a"
               for m in columns]
      out.append(f"| {budget} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)
