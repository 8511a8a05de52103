"""Sphinx configuration of the clip-cl documentation (MyST Markdown pages, API pages from docstrings).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``pip install -e ".[dev]"``);
``tests/test_docs.py`` builds it with warnings as errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages are importable without an install (autodoc)

project = "clip-cl"
author = "clip-cl contributors"
copyright = "clip-cl contributors"  # noqa: A001  (Sphinx's name)

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: headings up to level 3 get GitHub-style anchors (`page.md#section-title`), the anchors code cites.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# The packages import torch, open_clip and Avalanche; autodoc imports them as they are installed.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

highlight_language = "none"
html_theme = "alabaster"
html_title = "clip-cl"
