"""Sphinx configuration for the skicon documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. The examples gallery runs every
``examples/plot_*.py`` by default (a few minutes on two cores); set ``SKICON_DOCS_PLOT=0`` (or
pass ``-D plot_gallery=0``) to lay out the gallery without running it.
"""

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# the package (also when not installed), the benchmarks package and the local extensions
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import skicon  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")

project = "skicon"
author = "skicon developers"
copyright = "2026, skicon developers"
release = skicon.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax shipped in a Python package and copied to _static/mathjax: maths renders offline
    # (Sphinx's default loads MathJax from a CDN, so offline pages show raw LaTeX)
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "skicon_docs",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]
root_doc = "index"
default_role = "py:obj"
pygments_style = "sphinx"

# the local copy that sphinx-mathjax-offline installs (no CDN URL in the built pages)
mathjax_path = "mathjax/tex-chtml.js"

# -- autodoc / autosummary / numpydoc ------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- sphinx-gallery ------------------------------------------------------------------------
_run_gallery = os.environ.get("SKICON_DOCS_PLOT", "1").lower() not in ("0", "false", "no")


sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    # the quick start is the README's main job: shown on its own page, not in the gallery
    "ignore_pattern": r"(__init__|quickstart)\.py",
    "plot_gallery": _run_gallery,
    "within_subsection_order": "skicon_docs.ExampleOrder",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("skicon",),
    "download_all_examples": False,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib", "skicon_docs.reset_torch"),
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "min_reported_time": 1,
    # the timing pages load a table library from a CDN; the docs stay readable offline without
    "write_computation_times": False,
}

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skicon {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": False,
    "secondary_sidebar_items": {"**": ["page-toc"], "user_guide/periodic_table": [],
                                "benchmarks": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "benchmarks": [], "changelog": [], "citing": [],
                 "user_guide/periodic_table": []}
html_show_sourcelink = False
