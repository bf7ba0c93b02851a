"""A griffe extension for the docs site: Sphinx roles become links, examples become code.

actreg's docstrings name other objects the Sphinx way (``:func:`actreg.attach```,
``:class:`~actreg.ActregError```, ``:func:`convert``` inside ``actreg.sparse``). mkdocstrings
does not read roles, so this rewrites each into an *optional* autorefs link: a link where the
target is on the site, plain code where it is not (a private helper, the standard library).
The site's own pages use required references (``[actreg.attach][]``), which
``mkdocs build --strict`` checks. It also reads an ``Example:`` heading as Google style's
``Examples:`` so that the doctests render as code. Loaded by ``mkdocs.yml`` (``extensions:``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# Google style's examples section is "Examples:"; actreg's docstrings say "Example:", which
# griffe would render as an admonition of Markdown instead of doctest code blocks.
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`<>]+)`")


def _target(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` most likely means, seen from ``obj``."""
    if name == "actreg" or name.startswith("actreg."):
        return name
    if name.startswith("."):  # a relative module name, e.g. ``._stats``
        return obj.module.path + name
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:  # innermost enclosing class or module that has the name
        if name.split(".")[0] in scope.members:
            return f"{scope.path}.{name}"
        scope = scope.parent
    return name


def _rewrite(obj: griffe.Object, text: str) -> str:
    def one(m: re.Match[str]) -> str:
        short, name = m.group(1), m.group(2).strip()
        title = name.rsplit(".", 1)[-1] if short else name
        return f'<autoref identifier="{_target(obj, name)}" optional><code>{title}</code></autoref>'

    return _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(one, text))


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
            todo.extend(m for m in obj.members.values() if not m.is_alias)
