"""A griffe extension for the docs site (loaded by ``mkdocs.yml``, ``extensions:``).

Three fixes between actreg's docstrings and what mkdocstrings renders:

* Sphinx roles become links. The docstrings name other objects the Sphinx way
  (``:func:`actreg.attach```, ``:class:`~actreg.ActregError```, ``:func:`convert``` inside
  ``actreg.sparse``); mkdocstrings does not read roles, so each becomes an *optional*
  autorefs link: a link where the target is on the site, plain code where it is not (a
  private helper, the standard library). The site's own pages use required references
  (``[actreg.attach][]``), which ``mkdocs build --strict`` checks.
* ``Example:`` reads as Google style's ``Examples:``, so the doctests render as code
  instead of an admonition of Markdown.
* Exports that share their name with a submodule (``actreg.attach``, the function, and
  ``actreg/attach.py``) point at the function, as at run time; exported constants without
  a docstring get a line, so that every name of ``__all__`` is rendered
  (scripts/docs_coverage.py checks it).
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


def _objects(root: griffe.Object) -> list[griffe.Object]:
    """``root`` and everything defined under it (not following aliases)."""
    out, todo = [], [root]
    while todo:
        obj = todo.pop()
        out.append(obj)
        todo.extend(m for m in obj.members.values() if not m.is_alias)
    return out


def _shadowed(pkg: griffe.Module) -> list[tuple[griffe.Module, str, griffe.Object]]:
    """Exports that griffe takes for a submodule of the same name (``actreg.attach``)."""
    found = []
    for module in (o for o in _objects(pkg) if o.is_module):
        for name in module.exports or ():
            member, target = module.members.get(name), module.imports.get(name, "")
            if member is None or member.is_alias or not member.is_module:
                continue
            head, _, leaf = target.rpartition(".")
            if head == member.path and leaf in member.members:  # from .attach import attach
                found.append((module, name, member.members[leaf]))
    return found


_CONSTANT = "A public constant of this module (its value is shown above)."


def _document_constants(pkg: griffe.Module) -> None:
    """Give exported module attributes without a docstring a line, so they are rendered.

    mkdocstrings leaves out objects without a docstring (``show_if_no_docstring: false``
    keeps every undocumented method and attribute of the classes out); a constant listed
    in ``__all__`` (``REDUCTIONS``, ``METRICS``) is public all the same.
    """
    for module in (o for o in _objects(pkg) if o.is_module):
        for name in module.exports or ():
            member = module.members.get(name)
            try:
                target = member.final_target if member is not None and member.is_alias else member
            except Exception:  # outside the package
                continue
            if target is not None and target.is_attribute and not target.docstring:
                target.docstring = griffe.Docstring(_CONSTANT, parent=target)


class SphinxRoles(griffe.Extension):
    """Once the whole package is loaded: rewrite every docstring, and un-shadow exports.

    At run time ``actreg.attach`` is the function (``from actreg.attach import attach``
    rebinds the name after the submodule was imported); griffe keeps the submodule, so the
    function would be missing from the reference. Every alias is resolved first (their
    paths may go through the submodule), then the export is pointed at the function.
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = _objects(pkg)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
        _document_constants(pkg)
        shadowed = _shadowed(pkg)
        if not shadowed:
            return
        for obj in objects:
            for member in list(obj.members.values()):
                if member.is_alias:
                    try:
                        member.final_target  # noqa: B018 - resolves and caches the target
                    except Exception:  # outside the package (torch, ...)
                        pass
        for module, name, target in shadowed:
            module.set_member(name, griffe.Alias(name, target, parent=module))
