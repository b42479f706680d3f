"""The command line's own texts: ``--version``, and help that shows no source markup and every default."""

from __future__ import annotations

import re

import pytest

import flavorkit
from flavorkit.cli import build_parser, main

COMMANDS = ["backends", "package", "verify", "quickstart", "check", "serve"]
# reST roles and literals, and the docstring line that marks internal modules: none is for a user.
MARKUP = re.compile(r":(mod|class|func|meth|data|attr):`|``|Internal: not part of")


def test_version_prints_flavorkits_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"flavorkit {flavorkit.__version__}\n"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_source_markup(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"] if command else ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: flavorkit")
    assert not MARKUP.search(text), MARKUP.search(text)


def test_the_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    build_parser().print_help()
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), command
