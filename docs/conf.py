"""Sphinx configuration of the sphereembed API reference.

Build (warnings are errors, as in CI):
  sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, also where the package is not installed
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sphereembed  # noqa: E402

project = "sphereembed"
author = "sphereembed developers"
copyright = "sphereembed developers"  # pylint: disable=redefined-builtin
release = sphereembed.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

# Google style only; "Attributes:" sections become fields of their class, so
# that they never clash with the attributes autodoc documents itself.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True

add_module_names = False
toc_object_entries_show_parents = "hide"

templates_path = []
exclude_patterns = ["_build"]
html_theme = "furo" if __import__("importlib.util").util.find_spec("furo") else "alabaster"
html_title = f"sphereembed {release}"
html_static_path = []
