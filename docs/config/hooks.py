"""MkDocs hooks: the repository's top-level Markdown files become pages of the site, and the
pages' LaTeX maths becomes MathML.

``README.md`` is the home page, ``CHANGELOG.md`` and ``CONTRIBUTING.md`` pages of their own.
They are read at build time (never copied into ``docs/``, so they cannot drift), and their
links into ``docs/`` are rewritten to the site's paths; a link the site cannot resolve stays
as written, so the strict build reports it.

Maths: see ``maths.py``. An expression it cannot convert is logged as an error naming the page
and the expression, which fails the (strict) build.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

import maths  # docs/config/maths.py: MkDocs puts this file's folder on sys.path while importing it

log = logging.getLogger("mkdocs.hooks.maths")

ROOT = Path(__file__).resolve().parents[2]
#: Site page <- repository file.
PAGES = {"index.md": "README.md", "changelog.md": "CHANGELOG.md", "contributing.md": "CONTRIBUTING.md"}
_LINK = re.compile(r"\]\((?!https?://|#)([^)\s]+)\)")


def _site_link(target: str) -> str:
    path, _, anchor = target.partition("#")
    if path.startswith("docs/"):
        path = path[len("docs/"):]
    else:
        path = {v: k for k, v in PAGES.items()}.get(path, path)
    return path + (f"#{anchor}" if anchor else "")


def page_text(name: str) -> str:
    """The Markdown of the site page ``name`` made from its repository file."""
    text = (ROOT / PAGES[name]).read_text(encoding="utf-8")
    return _LINK.sub(lambda m: f"]({_site_link(m.group(1))})", text)


def on_config(config):
    # The extension is named by its path, which griffe reads relative to the working directory.
    options = config.plugins["mkdocstrings"].config.handlers["python"].setdefault("options", {})
    here = Path(__file__).resolve().parent
    options["extensions"] = [f"{here / 'griffe_rst.py'}:RstToMarkdown", f"{here / 'griffe_rst.py'}:HideSpecialMembers"]
    return config


def on_files(files, config):
    for name in PAGES:
        if files.get_file_from_path(name) is None:
            files.append(File.generated(config, name, content=page_text(name)))
    return files


def on_page_content(html, page, config, files):
    html, problems = maths.render(html)
    for problem in problems:
        log.error(f"{page.file.src_uri}: {problem}")
    return html
