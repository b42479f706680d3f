"""A griffe extension that turns flavorkit's reST-flavoured docstrings into Markdown for mkdocstrings.

flavorkit's docstrings are written for humans reading the source and for Sphinx-style tools:
cross-reference roles (``:class:`~flavorkit.types.Delta```), ``.. versionadded::`` directives and
``::`` literal blocks. mkdocstrings renders docstrings as Markdown, where those would show up as
raw markup. This extension rewrites them, in memory and before mkdocstrings parses anything:

- a role becomes an mkdocs-autorefs cross-reference: a link where the target is documented on
  the site, plain code where it is not (an internal module). A target that names nothing in the
  loaded flavorkit packages is logged as a warning, so ``mkdocs build --strict`` fails on a typo;
- ``.. versionadded:: N`` (and ``versionchanged``, ``deprecated``) becomes a short line, and
  ``.. note::``-style directives become admonitions;
- a paragraph ending in ``::`` followed by an indented block becomes a fenced code block.

It is configured in ``mkdocs.yml`` under the python handler's ``extensions``. The source files
are never changed.
"""

from __future__ import annotations

import builtins
import html
import re
import textwrap
from typing import Any

import griffe

_log = griffe.logger

_ROLE = re.compile(r":(?:py:)?(?P<role>class|meth|func|data|attr|mod|exc|obj|const):`(?P<body>[^`]+)`")
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>[a-z-]+)::[ \t]*(?P<arg>.*)$")
_CALLABLE_ROLES = {"meth", "func"}
_VERSION_DIRECTIVES = {"versionadded": "Added in", "versionchanged": "Changed in", "deprecated": "Deprecated since"}
_ADMONITIONS = {"note", "warning", "tip", "important", "caution", "danger", "attention", "hint", "seealso"}


class RstDocstrings(griffe.Extension):
    """Rewrite reST roles, directives and literal blocks in docstrings into Markdown."""

    def __init__(self, packages: list[str] | None = None, version_label: str = "version") -> None:
        """Only docstrings of ``packages`` (top-level names; default: every package) are rewritten."""
        super().__init__()
        self.packages = set(packages or [])
        self.version_label = version_label

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the package's own docstring (griffe fires ``on_object`` for its members only)."""
        self.on_object(obj=pkg, loader=loader)

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstring of one object once the whole tree is built (aliases resolve)."""
        if obj.docstring is None or (self.packages and obj.package.name not in self.packages):
            return
        obj.docstring.value = self.rewrite(obj.docstring.value, obj, loader)

    def rewrite(self, text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        """The Markdown form of one docstring."""
        text = _literal_blocks(text)
        text = self._directives(text, obj)
        return _ROLE.sub(lambda match: self._role(match, obj, loader), text)

    def _role(self, match: re.Match[str], obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        role, body = match["role"], match["body"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("~!")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
            if role in _CALLABLE_ROLES:
                title += "()"
        identifier = self._resolve(target, obj, loader)
        code = f"<code>{html.escape(title)}</code>"
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    def _resolve(self, target: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
        """The full path a role's target names, searched like Sphinx: the enclosing scopes, then absolute."""
        first = target.split(".", 1)[0]
        known = False  # the first part names something, so the rest must too
        scope: griffe.Object | None = obj if obj.is_module or obj.is_class else obj.parent
        while scope is not None:
            if first in scope.members:
                member = scope.members[first]
                ours = self.packages | {obj.package.name}
                if isinstance(member, griffe.Alias) and member.target_path.split(".", 1)[0] not in ours:
                    # An imported outside name (``pluggy``, ``logging.Filter``): not checked here.
                    return member.target_path + target[len(first) :]
                known = True
                if _lookup(scope, target) is not None:
                    return f"{scope.path}.{target}"
            scope = scope.parent
        collection = loader.modules_collection
        if first in collection.members and _lookup(collection[first], target.partition(".")[2]) is not None:
            return target
        unknown_bare_name = "." not in target and not hasattr(builtins, target)  # `int` is fine, `nothing` is not
        if known or unknown_bare_name or first in self.packages or first == obj.package.name:
            _log.warning(f"{obj.path}: the docstring refers to {target!r}, which names nothing in {first}")
            return None
        return target  # outside flavorkit (json, pydantic...): a link only if some page documents it

    def _directives(self, text: str, obj: griffe.Object) -> str:
        lines = text.splitlines()
        out: list[str] = []
        i = 0
        while i < len(lines):
            match = _DIRECTIVE.match(lines[i])
            if match is None:
                out.append(lines[i])
                i += 1
                continue
            indent, name, arg = match["indent"], match["name"], match["arg"].strip()
            start = i
            body, i = _indented_body(lines, i + 1, len(indent))
            if name in _VERSION_DIRECTIVES:
                version, _, note = arg.partition(" ")
                detail = " ".join([note.strip(), *(line.strip() for line in body)]).strip()
                line = f"_{_VERSION_DIRECTIVES[name]} {self.version_label} {version}.{' ' + detail if detail else ''}_"
                out.append(indent + line)
            elif name in _ADMONITIONS:
                kind = "info" if name == "seealso" else name
                title = ' "See also"' if name == "seealso" else ""
                out.append(f"{indent}!!! {kind}{title}")
                out.extend(f"{indent}    {line}" if line.strip() else "" for line in ([arg] if arg else []) + body)
            else:
                _log.warning(f"{obj.path}: the docstring has a reST directive {name!r} that the docs cannot render")
                out.extend(lines[start:i])
        return "\n".join(out)


def _lookup(root: griffe.Object, dotted: str) -> griffe.Object | griffe.Alias | None:
    """The member at ``dotted`` below ``root`` (following imports), or None."""
    current: griffe.Object | griffe.Alias = root
    for part in filter(None, dotted.split(".")):
        try:
            members = current.members
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        if part not in members:
            return None
        current = members[part]
    return current


def _indented_body(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines of a directive's body (indented deeper than the directive), dedented, and the next index."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return textwrap.dedent("\n".join(lines[start:end])).splitlines(), end


def _literal_blocks(text: str) -> str:
    """Turn ``paragraph::`` + an indented block into ``paragraph:`` + a fenced code block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::") or _DIRECTIVE.match(line):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        head = line.rstrip()[:-2].rstrip()
        if head.strip():
            out.append(head + ("" if head.endswith(":") else ":"))
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        body, i = _indented_body(lines, j, indent)
        if not body or j == i:
            i = j
            continue
        pad = " " * indent
        out.extend(["", pad + "```", *(pad + b if b.strip() else "" for b in body), pad + "```", ""])
    return "\n".join(out)
