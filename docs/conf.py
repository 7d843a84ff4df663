"""Sphinx configuration: ``.venv/bin/python -m sphinx docs docs/_build``."""

project = "tooz (Rust core)"
extensions = ["sphinx.ext.autodoc"]
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
