"""The colabs/ notebooks run top to bottom (tiny mode) and are stored without
outputs."""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests import helpers

NOTEBOOKS = sorted(glob.glob(os.path.join(helpers.REPO, "colabs", "*.ipynb")))


def test_the_three_notebooks_exist():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  assert names == ["01_losses_and_temperature.ipynb", "02_distill_in_minutes.ipynb",
                   "03_read_a_study.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, path


# The first notebook runs in the default suite; the longer two (a distillation
# and a study) are slow, within the default run's budget.
RUN_BY_DEFAULT = ("01_losses_and_temperature.ipynb",)


@pytest.mark.parametrize("path", [
    p if os.path.basename(p) in RUN_BY_DEFAULT
    else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
  monkeypatch.setenv("KD_JAX_TINY", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", helpers.REPO)
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()  # raises CellExecutionError on any error
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
