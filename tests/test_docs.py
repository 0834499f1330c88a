"""The API reference in ``docs/`` builds with Sphinx, warnings as errors, and covers every module.

CI builds it exactly as a user would:
``sphinx-build -W --keep-going -b html docs docs/_build/html`` (here into a
temporary folder). A docstring that Sphinx cannot parse (a broken Google-style
section, a bad indent, an unknown role) is a warning, so it fails this test
with the file and line in the message.

The docstring examples themselves run as doctests in the main test command:
``pyproject.toml`` passes ``--doctest-modules`` with ``sphereembed`` among the
test paths.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_docs_build_without_warnings(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLCONFIGDIR=str(tmp_path / "matplotlib"))
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, (
      f"sphinx-build failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
  assert (tmp_path / "html" / "index.html").is_file()
  assert (tmp_path / "html" / "api" / "losses.html").is_file()


def test_every_public_module_has_a_page():
  documented = set()
  for page in DOCS.rglob("*.rst"):
    documented.update(re.findall(r"^\.\. automodule:: ([\w.]+)", page.read_text(), flags=re.M))
  package = ROOT / "sphereembed"
  # From the files, not pkgutil: sphereembed.training has no __init__.py (a namespace package).
  modules = {".".join(("sphereembed",) + path.relative_to(package).with_suffix("").parts)
             .removesuffix(".__init__") for path in package.rglob("*.py")}
  # Private modules (a leading underscore) are documented through the package that re-exports them.
  public = {name for name in modules if not any(part.startswith("_") for part in name.split("."))}
  missing = sorted(public - documented)
  assert not missing, (f"modules without an API page: {missing}; add an automodule directive for "
                       "each to the page of its subpackage in docs/api/")
  assert not sorted(documented - modules - {"sphereembed"}), "docs name modules that do not exist"
