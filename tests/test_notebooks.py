"""The Colab notebooks in ``colabs/`` run top to bottom, and are committed clean.

Each notebook is executed with nbclient in SMOKE mode (``SPHEREEMBED_SMOKE=1``,
training shrunk to seconds) on an IPython kernel of this interpreter, from the
``colabs/`` folder as on a user's machine; any error fails the test. One test
per notebook, so that pytest-xdist spreads them over workers.

Notebooks that read a dataset are skipped when it is missing, unless
``SPHEREEMBED_REQUIRE_DATA=1`` (CI sets it where ``../shared/data`` exists).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
BADGE_PATTERN = re.compile(
    r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\(https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/colabs/(?P<name>[\w.-]+)"
    r"\.ipynb\)")
# Per cell; every notebook takes under about a minute in SMOKE mode on a busy 2-core CPU.
CELL_TIMEOUT_S = 300


def _ids(paths):
  return [p.stem for p in paths]


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3, f"expected the Colab notebooks in {COLABS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_clean_with_its_badge(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
          f"{path.name} cell {index} has outputs: strip them (e.g. regenerate with "
          "colabs/make_notebooks.py, or `jupyter nbconvert --clear-output --inplace`)")
  assert "widgets" not in notebook.metadata
  first = notebook.cells[0]
  assert first.cell_type == "markdown" and first.source.startswith("# ")
  match = BADGE_PATTERN.search(first.source)
  assert match, f"{path.name}: the first cell needs an 'Open in Colab' badge"
  assert match.group("name") == path.stem, f"{path.name}: the badge links to {match.group('name')}"
  install = notebook.cells[1]
  assert install.cell_type == "code" and "pip" in install.source and "google.colab" in install.source, (
      f"{path.name}: the second cell installs the package on Colab")
  assert any("SPHEREEMBED_SMOKE" in cell.source for cell in notebook.cells if cell.cell_type == "code")


def _require_datasets(notebook) -> None:
  """Skips (or, with SPHEREEMBED_REQUIRE_DATA=1, fails) when a dataset the notebook loads is missing."""
  from sphereembed.data import DataNotFoundError, load_dataset  # pylint: disable=g-import-not-at-top
  names = set()
  for cell in notebook.cells:
    if cell.cell_type == "code":
      names.update(re.findall(r"load_dataset\(\s*[\"'](\w+)[\"']", cell.source))
  for name in sorted(names):
    try:
      load_dataset(name)
    except DataNotFoundError:
      if os.environ.get("SPHEREEMBED_REQUIRE_DATA") == "1":
        raise
      pytest.skip(f"{name} not available (set SPHEREEMBED_REQUIRE_DATA=1 to make this a failure)")


def _kernel_manager(tmp_path) -> KernelManager:
  """An IPython kernel of this very interpreter, whatever kernels Jupyter has installed elsewhere."""
  kernel_dir = tmp_path / "kernels" / "sphereembed-test"
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "sphereembed tests", "language": "python"}))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
  return KernelManager(kernel_name="sphereembed-test", kernel_spec_manager=specs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
  notebook = nbformat.read(path, as_version=4)
  _require_datasets(notebook)
  # The kernel inherits this environment.
  monkeypatch.setenv("SPHEREEMBED_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
  monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  client = NotebookClient(notebook, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S,
                          resources={"metadata": {"path": str(COLABS)}})
  before = sorted(COLABS.iterdir())
  start = time.monotonic()
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  seconds = time.monotonic() - start
  print(f"{path.name}: {seconds:.1f} s")
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, f"{path.name} drew no figure"
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors
  # Nothing written next to the notebooks (figures and workdirs go to temporary folders).
  assert sorted(COLABS.iterdir()) == before
