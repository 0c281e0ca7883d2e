"""Griffe extension: the docstrings' Sphinx roles as links in the API reference.

aevb's docstrings are short prose with ``rst literals`` and roles such as
:class:`~aevb.train.Trainer` or :meth:`fit`. Markdown would show a role as ``:class:`` followed
by code; this extension rewrites each role whose target it finds in aevb — absolute, or relative
to the documented object, its parents or its module's imports, as Sphinx resolves them — into a
cross-reference that mkdocs-autorefs turns into a link where the target is rendered (a name
outside ``__all__`` stays code, without a warning). A role naming nothing in aevb that looks
like aevb's own (``aevb.…``, or a name not imported from another package) is a stale reference:
a warning, so ``mkdocs build --strict`` fails on it. Roles naming other packages
(``torch.…``) become plain code.
"""

from __future__ import annotations

import html
import logging
import re
from functools import partial

import griffe

log = logging.getLogger("mkdocs.plugins.aevb.griffe_roles")

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|exc|obj):`(?P<body>[^`]+)`")
_EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)


def _lookup(scope: griffe.Object, path: str) -> griffe.Object | griffe.Alias | None:
    try:
        return scope[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _canonical(member: griffe.Object | griffe.Alias) -> str | None:
    try:
        return member.final_target.path if member.is_alias else member.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


class Resolution:
    """Where a role's target points: ``path`` in aevb, ``external``, or neither (stale)."""

    def __init__(self, path: str | None = None, external: bool = False):
        self.path, self.external = path, external


def resolve(package: griffe.Module, obj: griffe.Object, target: str) -> Resolution:
    target = target.lstrip(".")
    head, _, rest = target.partition(".")
    if target == package.name or head == package.name:
        member = package if not rest else _lookup(package, rest)
        return Resolution(_canonical(member) if member is not None else None)
    scope: griffe.Object | None = obj
    inherits_from_elsewhere = False  # a class on the way has a base outside aevb (torch's)
    while scope is not None:  # the object, its class, its module, the parent packages
        members = scope.all_members if scope.is_class else scope.members
        if head in members:
            member = members[head] if not rest else _lookup(scope, target)
            path = _canonical(member) if member is not None else None
            if path is not None or not members[head].is_alias:
                return Resolution(path)
            # An alias of something outside aevb (``from torch import nn``).
            return Resolution(external=not _canonical(members[head]))
        if scope.is_class:
            inherits_from_elsewhere |= len(scope.resolved_bases) < len(scope.bases)
        if scope.is_module and head in scope.imports:
            full = scope.imports[head] + (f".{rest}" if rest else "")
            if full.split(".")[0] == package.name:
                return resolve(package, obj, full)
            return Resolution(external=True)
        scope = scope.parent
    # Not a name of aevb's, nor one imported: another package written out (torch.nn.Module),
    # or a member a class inherits from another package's class.
    return Resolution(external=inherits_from_elsewhere or "." in target)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            stack.extend(m for m in obj.members.values() if not m.is_alias)
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(partial(self._link, pkg, obj), obj.docstring.value)

    def _link(self, package: griffe.Module, obj: griffe.Object, match: re.Match) -> str:
        body = " ".join(match["body"].split())
        explicit = _EXPLICIT_TITLE.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
        code = f"<code>{html.escape(title)}</code>"
        found = resolve(package, obj, target)
        if found.path:
            return f'<autoref identifier="{html.escape(found.path)}" optional>{code}</autoref>'
        if not found.external:
            where = obj.relative_filepath if obj.filepath else obj.path
            log.warning(
                "%s:%s: %s: the docstring's %s names nothing in %s",
                where,
                obj.lineno,
                obj.path,
                match[0],
                package.name,
            )
        return code
