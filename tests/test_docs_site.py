"""The documentation site: it builds in strict mode, and its hook reference is the hook spec's docstrings."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from flavorkit.hookspec import PROJECT, REQUIRED_HOOKS, WrapperBackend

pytestmark = pytest.mark.slow  # a site build takes about 5 s

ROOT = Path(__file__).resolve().parent.parent
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
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("docs") / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site


def test_the_hook_reference_documents_every_hook_from_its_docstring(site: Path) -> None:
    assert set(REQUIRED_HOOKS) <= set(HOOKS)
    sections = page_sections(site, "reference/hookspec")
    for hook in HOOKS:
        heading = f"flavorkit.hookspec.WrapperBackend.{hook}"
        assert heading in sections.sections, f"no section for the hook {hook!r}"
        summary = (inspect.getdoc(getattr(WrapperBackend, hook)) or "").splitlines()[0]
        assert plain(summary).replace("()", "") in sections.text(heading).replace("()", ""), hook


def test_the_sdk_page_documents_every_name_of_the_sdk(site: Path) -> None:
    import flavorkit.sdk

    sections = page_sections(site, "reference/sdk")
    missing = [name for name in flavorkit.sdk.__all__ if f"flavorkit.sdk.{name}" not in sections.sections]
    assert not missing


def test_the_home_page_shows_the_readme_quickstart(site: Path) -> None:
    sections = page_sections(site, ".")
    text = " ".join(sections.text(heading) for heading in sections.sections)
    assert 'info = flavorkit.package(model="models/phi3-int4", backend="onnx-cpu")' in text


def test_the_readme_links_into_the_docs_resolve(site: Path) -> None:
    links = re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert links
    for page, anchor in links:
        sections = page_sections(site, page)
        assert not anchor or anchor in sections.sections, f"docs/{page}.md has no heading #{anchor}"


def test_a_broken_link_anchor_or_cross_reference_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("docs", "core", "plugins"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    for file in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / file, copy / file)
    hookspec = copy / "core" / "flavorkit" / "hookspec.py"
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
