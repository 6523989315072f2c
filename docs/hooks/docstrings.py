"""A griffe extension for the API reference: the docstrings' reStructuredText roles become links.

The docstrings are Google style with reST roles (``:func:`gd```, ``:class:`~ntkdyn.systems.X```).
Each role whose target is a documented object becomes a cross-reference to its entry; any other
role becomes inline code. Square brackets written as mathematics (``proj_[a,b](p)``,
``AXIS[:CHUNK]``) are escaped, so Markdown does not read them as links.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc|const):`(~?)([\w.]+)(?:\(\))?`")
CODE = re.compile(r"(``.*?``|`[^`\n]*`)", re.DOTALL)
MATH_BRACKET = re.compile(r"(?<=[\w\]])\[")


class RolesToLinks(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self._visit(pkg, pkg)

    def _visit(self, obj, pkg) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg)
        for member in obj.members.values():
            if not member.is_alias and member.parent is obj:
                self._visit(member, pkg)


def _documented(path: str, pkg: griffe.Module) -> str | None:
    """The canonical path of ``path`` if the API reference has an entry for it, else None."""
    if not path.startswith(pkg.path + ".") and path != pkg.path:
        return None
    try:
        target = pkg.modules_collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        target = target.final_target if target.is_alias else target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    parts = target.path.split(".")
    if any(p.startswith("_") for p in parts[1:]):
        return None
    node = target
    while node.parent is not None:  # every enclosing object must be shown too
        if not node.is_public:
            return None
        node = node.parent
    return target.path


def _resolve(name: str, obj, pkg: griffe.Module) -> str | None:
    scope = obj if obj.is_module or obj.is_class else obj.parent
    candidates = [name]
    while scope is not None:
        candidates.append(f"{scope.path}.{name}")
        scope = scope.parent
    for candidate in candidates:
        head, _, rest = candidate.partition(".")
        if head != pkg.path:
            continue
        # a name imported into a module: follow the alias
        found = _documented(candidate, pkg)
        if found:
            return found
    return None


def _link(match: re.Match, obj, pkg) -> str:
    short, name = match.group(1), match.group(2)
    shown = name.rsplit(".", 1)[-1] if short else name
    target = _resolve(name, obj, pkg)
    return f"[`{shown}`][{target}]" if target else f"`{shown}`"


def _rewrite(text: str, obj, pkg) -> str:
    text = ROLE.sub(lambda m: "\0" + _link(m, obj, pkg) + "\0", text)
    pieces = re.split(r"(\0[^\0]*\0)", text)
    out = []
    for piece in pieces:
        if piece.startswith("\0"):
            out.append(piece.strip("\0"))
            continue
        parts = CODE.split(piece)
        out.append(
            "".join(p if i % 2 else MATH_BRACKET.sub(r"\\[", p) for i, p in enumerate(parts))
        )
    return "".join(out)
