"""MkDocs hooks for the docs site: links in the tutorial notebooks, checked and rewritten.

A notebook's Markdown cells link to other pages the way Jupyter and a repository browser
read them, relative to the ``.ipynb`` file (``../guides/penalties.md``,
``02_target_sparsity.ipynb``). mkdocs-jupyter renders a notebook to HTML without MkDocs'
link handling, so those links would break on the site and ``--strict`` would not notice.
This hook resolves each relative link of a rendered notebook against the site's files,
rewrites it to the page's URL, and logs a warning (an error under ``--strict``) when the
target does not exist. Loaded by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import logging
import posixpath
import re
from typing import Any
from urllib.parse import urlsplit

from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

log = logging.getLogger("mkdocs.hooks.notebook_links")

_HREF = re.compile(r'(href|src)="([^"#?]+)(#[^"]*)?"')


def on_page_content(html: str, page: Page, files: Files, **kwargs: Any) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    here = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match[str]) -> str:
        attr, path, frag = m.group(1), m.group(2), m.group(3) or ""
        parts = urlsplit(path)
        if parts.scheme or parts.netloc or path.startswith(("/", "data:")):
            return m.group(0)
        target = posixpath.normpath(posixpath.join(here, path))
        file = files.get_file_from_path(target)
        if file is None:
            if path.endswith((".md", ".ipynb")):
                log.warning("%s links to %r, which is not in the docs", page.file.src_uri, path)
            return m.group(0)
        return f'{attr}="{get_relative_url(file.url, page.url)}{frag}"'

    return _HREF.sub(fix, html)
