"""Sphinx configuration for jxent's documentation.

Build it from the repository root with
``python -m sphinx -W -b html docs docs/_build/html``; `tests/test_docs.py`
does the same in the test suite. The notebooks are rendered from their
stored outputs, never executed.
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the checkout being built, installed or not; `_ext` holds the
# project's own extension.
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

import jxent  # noqa: E402

project = "jxent"
author = "The jxent authors"
copyright = "the jxent authors"
release = version = jxent.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "jxent_docs",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "notebooks/*.py"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb",
                 ".ipynb": "myst-nb"}

# Every warning fails the build (`-W`). Cross-references to jxent are
# checked (`nitpicky`); names from other packages (jax, numpy, typing) have
# no inventory here (no network in the test suite) and are left unlinked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!jxent(\.|$)).*")]
default_role = "jxent-auto"

# --- the API pages (docs/_ext/jxent_docs.py) ---------------------------------
# Every name in these modules' `__all__` is documented, on the page of the
# first rule that matches it: (family, public module, defining module,
# name), as fnmatch patterns. A new public name that no rule matches fails
# the build.
jxent_api_modules = ["jxent", "jxent.sharded"]
jxent_api_rules = [
    ("sharded", "jxent.sharded", "*", "*"),
    ("sharded", "jxent", "jxent.sharded", "sharded"),
    ("linear", "jxent", "*", "linear_*"),
    ("linear", "jxent", "jxent._vocab.cross_entropy", "*"),
    ("primitives", "jxent", "jxent._numerics.logsumexp", "*"),
    ("debugging", "jxent", "jxent._debug.checked", "*"),
    ("logits", "jxent", "jxent._information.logits", "*_from_logits"),
    ("probabilities", "jxent", "jxent._information.probabilities", "*"),
    ("losses", "jxent", "jxent._cross_entropy.losses", "*"),
]
jxent_bench_results = "../bench/results"

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
python_maximum_signature_line_length = 80
toc_object_entries_show_parents = "hide"

# --- Markdown and notebooks --------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
nb_execution_mode = "off"  # render the outputs stored in the notebooks
nb_execution_raise_on_error = True

# --- HTML --------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"jxent {release}"
html_theme_options = {
    "repository_url": "https://github.com/jxent/jxent",
    "repository_branch": "main",
    "use_repository_button": True,
    "use_issues_button": True,
    # No source or edit buttons: the notebooks' pages come through the
    # docs/notebooks symlink, a path that GitHub does not resolve.
    "show_toc_level": 2,
}
