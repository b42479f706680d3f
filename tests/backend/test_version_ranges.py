"""One place for version ranges: backends' ``dependencies()`` come from flavorkit's extras (issue 10, issue 11).

``extra_requirements`` reads the installed distribution's metadata; the throwaway distributions
here are real ``*.dist-info`` folders on ``sys.path``, read by ``importlib.metadata`` as pip's are.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from flavorkit.backend.registry import get_backend, get_registry, missing_requirements
from flavorkit.sdk import extra_requirements
from plugin_fixtures import isolated_site

ROOT = Path(__file__).resolve().parents[2]
#: Each first-party backend and the flavorkit extra that installs its runtime.
BACKEND_EXTRAS = {
    "onnx-cpu": "onnx",
    "onnx-cuda": "onnx-cuda",
    "onnx-dml": "onnx-dml",
    "transformers": "transformers",
    "optimum-onnx": "optimum",
}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from isolated_site(tmp_path, monkeypatch, [])


def _distribution(site: Path, monkeypatch: pytest.MonkeyPatch, name: str, version: str, *lines: str) -> None:
    """A dist-info whose METADATA carries ``lines`` (Provides-Extra, Requires-Dist), on sys.path."""
    root = site / name
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    head = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    (info / "METADATA").write_text(head + "".join(f"{line}\n" for line in lines))
    monkeypatch.syspath_prepend(str(root))


def _by_hand(extra: str) -> set[str]:
    """The installed flavorkit's Requires-Dist lines for ``extra``, parsed without the helper (no nesting)."""
    found = set()
    for text in md.requires("flavorkit") or []:
        req = Requirement(text)
        if req.marker is not None and f'extra == "{extra}"' in str(req.marker):
            found.add((req.name, str(req.specifier)))
    return found


@pytest.mark.parametrize("backend", sorted(BACKEND_EXTRAS))
def test_first_party_dependencies_are_the_extras_ranges(backend: str) -> None:
    deps = get_backend(backend, require_available=False).dependencies()
    declared = _by_hand(BACKEND_EXTRAS[backend])
    assert declared, f"premise: flavorkit declares the {BACKEND_EXTRAS[backend]!r} extra"
    parsed = {(Requirement(d).name, str(Requirement(d).specifier)) for d in deps}
    assert declared <= parsed
    # optimum-onnx adds only the ONNX Runtime build in use (onnxruntime or onnxruntime-gpu), unversioned by extras.
    extra = parsed - declared
    assert {name for name, _ in extra} <= ({"onnxruntime", "onnxruntime-gpu"} if backend == "optimum-onnx" else set())


def test_pyproject_extras_are_what_the_installed_metadata_says() -> None:
    """The ranges live in pyproject.toml; the metadata the helper reads must be built from this checkout's."""
    dist = md.distribution("flavorkit")
    where = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    beside = Path(str(dist.locate_file(""))).resolve()  # an editable build's egg-info sits in the checkout
    if where.rstrip("/") != ROOT.as_uri() and beside != ROOT:
        pytest.skip(f"the installed flavorkit's metadata is not built from this checkout ({ROOT})")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in BACKEND_EXTRAS.values():
        mine = {(Requirement(r).name, Requirement(r).specifier) for r in extras[extra]}
        assert {(Requirement(r).name, Requirement(r).specifier) for r in extra_requirements(extra)} == mine


def test_ranges_read_lower_bound_first_without_markers(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(
        site,
        monkeypatch,
        "fk-ranges",
        "1.0",
        "Provides-Extra: rt",
        'Requires-Dist: fk-lib<0.19,>=0.15; extra == "rt"',
        'Requires-Dist: fk-other[fast]!=2.1,<3,>=2; extra == "rt"',
        'Requires-Dist: fk-never; extra == "rt" and python_version < "3"',
        'Requires-Dist: fk-here; extra == "rt" and python_version >= "3"',
        "Requires-Dist: fk-core>=1",
    )
    assert extra_requirements("rt", distribution="fk-ranges") == [
        "fk-lib>=0.15,<0.19",
        "fk-other[fast]>=2,!=2.1,<3",
        "fk-here",
    ]


def test_nested_extras_of_the_distribution_itself_are_expanded_once(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _distribution(
        site,
        monkeypatch,
        "fk-nest",
        "1.0",
        "Provides-Extra: a",
        "Provides-Extra: b-two",
        'Requires-Dist: fk-nest[b-two]; extra == "a"',
        'Requires-Dist: fk-x>=1; extra == "a"',
        'Requires-Dist: fk-nest[a]; extra == "b-two"',  # a cycle: must terminate
        'Requires-Dist: fk-y<2; extra == "b-two"',
        'Requires-Dist: fk-x>=1; extra == "b-two"',
    )
    assert extra_requirements("a", distribution="fk-nest") == ["fk-y<2", "fk-x>=1"]
    assert extra_requirements("b_two", distribution="fk-nest") == ["fk-x>=1", "fk-y<2"]  # names normalise


def test_unknown_extra_names_the_ones_that_exist(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(site, monkeypatch, "fk-few", "2.5", "Provides-Extra: gpu", "Provides-Extra: cpu")
    with pytest.raises(LookupError) as exc:
        extra_requirements("tpu", distribution="fk-few")
    assert str(exc.value) == "fk-few 2.5 has no extra 'tpu' (its extras: cpu, gpu)"


def test_without_the_distribution_the_bare_names_are_the_requirements() -> None:
    """A packaged model's environment has flavorkit's code (shipped in the model) but no flavorkit distribution."""
    assert extra_requirements("onnx", distribution="fk-not-installed-anywhere", fallback=("rt-a", "rt-b")) == [
        "rt-a",
        "rt-b",
    ]
    assert extra_requirements("onnx", distribution="fk-not-installed-anywhere") == []


def test_a_runtime_newer_than_supported_says_to_use_another_environment(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5 next to optimum-onnx's transformers<4.58: the fix is not to downgrade it."""
    _distribution(site, monkeypatch, "fk-runtime", "5.2.0")
    assert missing_requirements(["fk-runtime>=4.45,<4.58"]) == [
        "fk-runtime 5.2.0 is installed but fk-runtime>=4.45,<4.58 is required (newer than this backend "
        "supports: install it in a separate environment rather than downgrade fk-runtime)"
    ]
    assert missing_requirements(["fk-runtime>=6"]) == ["fk-runtime 5.2.0 is installed but fk-runtime>=6 is required"]
    assert missing_requirements(["fk-runtime>=4,!=5.2.0"]) == [
        "fk-runtime 5.2.0 is installed but fk-runtime>=4,!=5.2.0 is required"
    ]


def test_backends_listing_gives_reason_and_fix_for_each_unavailable_backend() -> None:
    from flavorkit.cli import main

    statuses = {s.name: s for s in get_registry(refresh=True).statuses()}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["backends"]) == 0
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100, "the table fits 100 columns"
    table, _, notes = text.partition("\n\n")
    notes = notes.replace(" \\\n       ", " ")  # a long fix is continued with a backslash
    states = {line.split()[0]: line.split()[3] for line in table.splitlines()[2:] if not line.startswith(" ")}
    for name, status in statuses.items():
        if status.available:
            assert states[name] == "available"
            assert f"{name}: " not in notes
        elif status.install_hint:
            assert states[name] == "unavailable"
            assert f"\n  Fix: {status.install_hint}" in f"\n{notes}"
    dml = "onnxruntime-genai-directml"  # never installed on Linux: the reason, then the fix
    assert f"onnx-dml: {dml} is not installed\n  Fix: pip install '{dml}>=0.15,<0.19'" in notes
