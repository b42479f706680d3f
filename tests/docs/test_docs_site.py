"""The documentation site: it builds in strict mode, and its hook reference is the hook spec's docstrings.

The builds take about 5 s each (marked slow); the tests of the docstring extension take milliseconds.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import griffe
import pytest

from flavorkit.backend.hookspec import PROJECT, REQUIRED_HOOKS, WrapperBackend

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, value in vars(WrapperBackend).items() if hasattr(value, f"{PROJECT}_spec")]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


class Sections(HTMLParser):
    """The text of a page, split at each heading that has an id: {heading id: text up to the next heading}."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {"": []}
        self.current = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        heading_id = dict(attrs).get("id")
        if re.fullmatch(r"h[1-6]", tag) and heading_id:
            self.current = heading_id
            self.sections[heading_id] = []

    def handle_data(self, data: str) -> None:
        self.sections[self.current].append(data)

    def text(self, heading_id: str) -> str:
        return " ".join("".join(self.sections[heading_id]).split())


def page_sections(site: Path, page: str) -> Sections:
    parser = Sections()
    parser.feed((site / page / "index.html").read_text(encoding="utf-8"))
    return parser


def plain(docstring_line: str) -> str:
    """A docstring line as the site shows it: ``:class:`~a.B``` as B, ````x```` as x."""
    line = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", docstring_line)
    return " ".join(line.replace("``", "").split())


@pytest.fixture(scope="module")
def rst_docstrings() -> Any:
    """docs/_ext/rst_docstrings.py, the griffe extension mkdocs.yml configures (not an importable package)."""
    spec = importlib.util.spec_from_file_location("rst_docstrings", ROOT / "docs" / "_ext" / "rst_docstrings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_package(tmp_path: Path, extension: Any, source: str) -> griffe.Module:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(source, encoding="utf-8")
    ext = extension.RstDocstrings(packages=["pkg"], version_label="spec version")
    loader = griffe.GriffeLoader(extensions=griffe.load_extensions(ext), search_paths=[str(tmp_path)])
    package = loader.load("pkg")
    assert isinstance(package, griffe.Module)
    return package


PACKAGE = '''"""See :class:`~pkg.Thing`, :meth:`Thing.run`, :class:`Thing <pkg.Thing>` and :exc:`ValueError`.

Usage::

    thing = Thing()
    thing.run()

.. note::
   Be careful
   here.

.. versionadded:: 2
"""

import json


class Thing:
    """A thing; :meth:`run` runs it, :class:`json.JSONDecoder` decodes."""

    def run(self) -> None:
        """Run it."""
'''


def autoref(identifier: str, title: str) -> str:
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


def test_roles_become_cross_references_resolved_like_sphinx(tmp_path: Path, rst_docstrings: Any) -> None:
    package = load_package(tmp_path, rst_docstrings, PACKAGE)

    assert package.docstring is not None
    first_line = package.docstring.value.splitlines()[0]
    assert first_line == (
        f"See {autoref('pkg.Thing', 'Thing')}, {autoref('pkg.Thing.run', 'Thing.run()')}, "
        f"{autoref('pkg.Thing', 'Thing')} and {autoref('ValueError', 'ValueError')}."
    )
    thing = package["Thing"].docstring
    assert thing.value == (
        f"A thing; {autoref('pkg.Thing.run', 'run()')} runs it, "
        f"{autoref('json.JSONDecoder', 'json.JSONDecoder')} decodes."
    )


def test_literal_blocks_and_directives_become_markdown(tmp_path: Path, rst_docstrings: Any) -> None:
    package = load_package(tmp_path, rst_docstrings, PACKAGE)

    assert package.docstring is not None
    body = package.docstring.value.split("\n", 1)[1]
    fenced = "Usage:\n\n```\nthing = Thing()\nthing.run()\n```"
    admonition = "!!! note\n    Be careful\n    here."
    assert body.strip("\n").split("\n\n\n") == [fenced, admonition + "\n\n_Added in spec version 2._"]


@pytest.mark.parametrize("role", [":class:`Thing.nothing`", ":func:`nothing_here`", ":mod:`pkg.missing`"])
def test_a_role_naming_nothing_is_a_warning_and_plain_code(
    tmp_path: Path, rst_docstrings: Any, role: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="griffe"):
        package = load_package(tmp_path, rst_docstrings, PACKAGE.replace(":exc:`ValueError`", role, 1))

    target = role.split("`")[1]
    assert [record.getMessage() for record in caplog.records] == [
        f"pkg: the docstring refers to {target!r}, which names nothing in {target.split('.')[0]}"
    ]
    assert package.docstring is not None
    assert f" and <code>{target}{'()' if role.startswith(':func:') else ''}</code>." in package.docstring.value


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("docs") / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site


@pytest.mark.slow
def test_the_hook_reference_documents_every_hook_from_its_docstring(site: Path) -> None:
    assert set(REQUIRED_HOOKS) <= set(HOOKS)
    sections = page_sections(site, "reference/hookspec")
    for hook in HOOKS:
        heading = f"flavorkit.backend.hookspec.WrapperBackend.{hook}"
        assert heading in sections.sections, f"no section for the hook {hook!r}"
        summary = (inspect.getdoc(getattr(WrapperBackend, hook)) or "").splitlines()[0]
        assert plain(summary).replace("()", "") in sections.text(heading).replace("()", ""), hook


@pytest.mark.slow
def test_the_sdk_page_documents_every_name_of_the_sdk(site: Path) -> None:
    import flavorkit.sdk

    sections = page_sections(site, "reference/sdk")
    missing = [name for name in flavorkit.sdk.__all__ if f"flavorkit.sdk.{name}" not in sections.sections]
    assert not missing


@pytest.mark.slow
def test_the_home_page_shows_the_readme_quickstart(site: Path) -> None:
    sections = page_sections(site, ".")
    text = " ".join(sections.text(heading) for heading in sections.sections)
    assert "model=flavorkit.demo_model()," in text and "The capital of Germany is Berlin." in text


@pytest.mark.slow
def test_the_readme_links_into_the_docs_resolve(site: Path) -> None:
    links = re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert links
    for page, anchor in links:
        sections = page_sections(site, page)
        assert not anchor or anchor in sections.sections, f"docs/{page}.md has no heading #{anchor}"


@pytest.mark.slow
def test_a_broken_link_anchor_or_cross_reference_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("docs", "core", "plugins"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    for file in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / file, copy / file)
    hookspec = copy / "core" / "flavorkit" / "backend" / "hookspec.py"
    source = hookspec.read_text(encoding="utf-8")
    hookspec.write_text(source.replace('"""', '"""See :meth:`WrapperBackend.no_such_hook`. ', 1), encoding="utf-8")
    with (copy / "docs" / "index.md").open("a", encoding="utf-8") as index:
        index.write("\n[a](user-guide.md#no-such-heading) [b](no-such-page.md)\n")

    result = build(copy / "mkdocs.yml", tmp_path / "site")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Aborted with 3 warnings in strict mode" in output
    assert "refers to 'WrapperBackend.no_such_hook', which names nothing" in output
    assert "contains a link 'user-guide.md#no-such-heading', but the doc 'user-guide.md' does not" in output
    assert "contains a link 'no-such-page.md', but the target is not found" in output
