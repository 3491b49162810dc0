"""The notebooks: the quick start runs (at smoke scale, as a reader would run it), and every
notebook is committed executed, with its outputs and without an error in them."""

import json
import pathlib

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
METHOD_NOTEBOOKS = ("quickstart.ipynb", "gradient_transfer.ipynb", "wgan_augmentation.ipynb",
                    "stargan_cycada.ipynb")


def _outputs(notebook) -> list[dict]:
  return [out for cell in notebook["cells"] if cell["cell_type"] == "code"
          for out in cell.get("outputs", [])]


@pytest.mark.parametrize("name", METHOD_NOTEBOOKS)
def test_notebook_is_committed_executed(name):
  notebook = json.loads((NOTEBOOKS / name).read_text())
  code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert code and all(c.get("execution_count") for c in code), f"{name} is not executed"
  outputs = _outputs(notebook)
  assert not [o for o in outputs if o["output_type"] == "error"], f"{name} stored an error"
  assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no figure"


def test_quickstart_runs():
  nbclient = pytest.importorskip("nbclient")
  import nbformat
  notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      cell.outputs = []
  # Raises CellExecutionError, naming the cell, when any cell fails.
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  text = "".join(o.get("text", "") for o in _outputs(notebook))
  assert "DEMO DATA" in text  # the smoke run's table, labelled
  images = [o for o in _outputs(notebook) if "image/png" in o.get("data", {})]
  assert len(images) >= 3  # the task, the learning curves, the overlay
