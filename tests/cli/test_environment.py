"""Every ``FLAVORKIT_*`` variable: one table (``flavorkit.settings``), one boolean grammar, read where it acts.

Each variable is checked through the code that reads it (the registry, the progress lines, the
loader of a packaged model, the cache, the signing key, ``flavorkit serve``), so the tests hold
whatever the accessors look like inside. The user guide's table is checked against the settings
table, and ``flavorkit serve``'s flags against the serve settings model.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from pydantic import ValidationError

import flavorkit
from flavorkit.backend.registry import get_registry, strict_from_env
from flavorkit.cli import build_parser, main
from flavorkit.errors import IntegrityError, SettingsError
from flavorkit.model.signing import trusted_key
from flavorkit.packaging.cache import cache_root
from flavorkit.packaging.progress import step
from flavorkit.settings import VARIABLES, ServeSettings, allowed_values, env_var, scoped_env
from plugin_fixtures import ECHO_BACKEND, make_distribution

ROOT = Path(__file__).resolve().parents[2]

TRUE_FORMS = ("1", "true", "yes", "on", "TRUE", " Yes ", "On\n")
FALSE_FORMS = ("0", "false", "no", "off", "FALSE", " No ", "\toff")
BAD_FORMS = ("2", "maybe", "y", "enabled", "-1")
BOOLEAN = "1, true, yes, on to turn it on; 0, false, no, off to turn it off"


def _refused(name: str, value: str) -> str:
    """The message of the error for a boolean variable outside the grammar."""
    return re.escape(f"{name}: {value!r} is not a boolean (allowed: {BOOLEAN})")


def test_the_boolean_variables_are_the_ones_tested_here() -> None:
    booleans = {name for name, v in VARIABLES.items() if v.type == "boolean"}
    assert booleans == {"FLAVORKIT_STRICT_PLUGINS", "FLAVORKIT_PROGRESS", "FLAVORKIT_VERIFY_ARTIFACTS"}


# -- FLAVORKIT_STRICT_PLUGINS ---------------------------------------------------------------------


def test_strict_plugins_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAVORKIT_STRICT_PLUGINS", raising=False)
    assert strict_from_env() is False, "off by default"
    for value in TRUE_FORMS:
        monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", value)
        assert strict_from_env() is True, value
    for value in (*FALSE_FORMS, "", "  "):
        monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", value)
        assert strict_from_env() is False, value
    for value in BAD_FORMS:
        monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", value)
        with pytest.raises(SettingsError, match=_refused("FLAVORKIT_STRICT_PLUGINS", value)):
            strict_from_env()


def test_a_bad_strict_plugins_value_is_a_clear_cli_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "sure")
    try:
        assert main(["backends", "--json"]) == 2
    finally:
        monkeypatch.delenv("FLAVORKIT_STRICT_PLUGINS")
        get_registry(refresh=True)
    err = capsys.readouterr().err
    assert err.startswith("flavorkit: error: FLAVORKIT_STRICT_PLUGINS: 'sure' is not a boolean (allowed: ")


# -- FLAVORKIT_PROGRESS ---------------------------------------------------------------------------


def _progress_lines(capsys: pytest.CaptureFixture[str]) -> str:
    with step("converting"):
        pass
    return capsys.readouterr().err


def test_progress_grammar(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FLAVORKIT_PROGRESS", raising=False)
    assert "[flavorkit] converting" in _progress_lines(capsys), "on by default"
    for value in (*TRUE_FORMS, ""):
        monkeypatch.setenv("FLAVORKIT_PROGRESS", value)
        assert "[flavorkit] converting" in _progress_lines(capsys), value
    for value in FALSE_FORMS:
        monkeypatch.setenv("FLAVORKIT_PROGRESS", value)
        assert _progress_lines(capsys) == "", value
    for value in BAD_FORMS:
        monkeypatch.setenv("FLAVORKIT_PROGRESS", value)
        with pytest.raises(SettingsError, match=_refused("FLAVORKIT_PROGRESS", value)):
            _progress_lines(capsys)


# -- FLAVORKIT_VERIFY_ARTIFACTS, on a packaged model ----------------------------------------------

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def tampered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A model packaged with a pure-Python backend, one of whose artifacts was changed afterwards."""
    modules, backends = {"fk_env_echo": ECHO_BACKEND}, {"echo": "fk_env_echo:backend"}
    root = make_distribution(tmp_path / "site", "fk-env-verify", modules=modules, backends=backends)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("FLAVORKIT_VERIFY_ARTIFACTS", raising=False)
    monkeypatch.delenv("FLAVORKIT_TRUSTED_KEY", raising=False)
    get_registry(refresh=True)
    model = tmp_path / "model"
    flavorkit.package(model="source-text", backend="echo", path=model)
    (packaged,) = (model / "artifacts").rglob("config.txt")
    packaged.write_text("changed after packaging")
    yield model
    sys.modules.pop("fk_env_echo", None)
    monkeypatch.undo()
    get_registry(refresh=True)


def test_verify_artifacts_grammar_on_a_packaged_model(tampered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(IntegrityError, match=r"echo/config\.txt"):
        mlflow.pyfunc.load_model(str(tampered))  # on by default
    for value in ("1", "true", " ON", ""):
        monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", value)
        with pytest.raises(IntegrityError, match=r"echo/config\.txt"):
            mlflow.pyfunc.load_model(str(tampered))
    for value in ("false", "FALSE", "no", " off ", "0"):  # "false" once left verification on silently
        monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", value)
        loaded = mlflow.pyfunc.load_model(str(tampered))
        assert loaded.predict(HELLO)[0]["choices"][0]["message"]["content"] == "hello", value
    for value in ("nope", "disabled"):
        monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", value)
        with pytest.raises(Exception, match=_refused("FLAVORKIT_VERIFY_ARTIFACTS", value)) as exc:
            mlflow.pyfunc.load_model(str(tampered))
        assert type(exc.value).__name__ == "SettingsError"


# -- the path variables -----------------------------------------------------------------------------


def test_trusted_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for value in ("", "  "):
        monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", value)
        assert trusted_key() is None, "empty is unset"
    monkeypatch.delenv("FLAVORKIT_TRUSTED_KEY")
    assert trusted_key() is None
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", f" {tmp_path / 'signer.pub.pem'} ")
    assert trusted_key() == tmp_path / "signer.pub.pem"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FLAVORKIT_TRUSTED_KEY", "~/signer.pub.pem")
    assert trusted_key() == tmp_path / "signer.pub.pem"


def test_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for value in ("", " "):
        monkeypatch.setenv("FLAVORKIT_CACHE", value)
        assert cache_root() == tmp_path / "xdg" / "flavorkit", "empty is unset"
    monkeypatch.delenv("FLAVORKIT_CACHE")
    assert cache_root() == tmp_path / "xdg" / "flavorkit"
    monkeypatch.setenv("FLAVORKIT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


# -- the serve settings -----------------------------------------------------------------------------

#: A key file: two keys, a comment and a blank line.
KEYS = Path(__file__).with_name("api-keys.txt")

#: A value each serve setting takes from its variable, and what it becomes.
GOOD: dict[str, tuple[str, Any]] = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9000", 9000),
    "served_model_name": ("chat", "chat"),
    "api_key": ("k3y", "k3y"),
    "api_key_file": (str(KEYS), KEYS),
    "trusted_key": ("/keys/signer.pub.pem", Path("/keys/signer.pub.pem")),
    "max_batch": ("3", 3),
    "batching": ("request", "request"),
    "join_wait": ("0.5", 0.5),
    "batch_wait": ("0", 0.0),
    "max_queue": ("5", 5),
    "request_timeout": ("1.5", 1.5),
    "max_body_bytes": ("10", 10),
    "drain_timeout": ("0", 0.0),
    "log_level": ("debug", "debug"),
    "threads": ("2", 2),
}

#: A value each bounded serve setting refuses, and why.
BAD: dict[str, tuple[str, str]] = {
    "port": ("65536", "is out of range"),
    "max_batch": ("0", "is out of range"),
    "batching": ("eager", "is not one of the choices"),
    "join_wait": ("-1", "is out of range"),
    "batch_wait": ("soon", "is not a number"),
    "max_queue": ("2.5", "is not a whole number"),
    "request_timeout": ("0", "is out of range"),
    "max_body_bytes": ("0", "is out of range"),
    "drain_timeout": ("inf", "is out of range"),
    "log_level": ("loud", "is not one of the choices"),
    "threads": ("0", "is out of range"),
    "api_key_file": (
        "/no/such/keys.txt",
        "is not allowed (Value error, cannot read the key file '/no/such/keys.txt': "
        "[Errno 2] No such file or directory: '/no/such/keys.txt')",
    ),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_serve_setting_is_tested() -> None:
    assert set(GOOD) == set(ServeSettings.model_fields)
    assert set(ServeSettings.model_fields) - set(BAD) == {"host", "served_model_name", "api_key", "trusted_key"}


@pytest.mark.parametrize("setting", list(GOOD))
def test_each_serve_setting_is_read_from_its_variable(clean_env: pytest.MonkeyPatch, setting: str) -> None:
    name = env_var(setting)
    assert name in VARIABLES
    assert getattr(ServeSettings.load(), setting) == ServeSettings.model_fields[setting].default
    text, value = GOOD[setting]
    clean_env.setenv(name, text)
    assert getattr(ServeSettings.load(), setting) == value
    # a flag (or keyword) wins over the variable
    other = ServeSettings.load(**{setting: ServeSettings.model_fields[setting].default})
    assert getattr(other, setting) == ServeSettings.model_fields[setting].default


@pytest.mark.parametrize("setting", list(BAD))
def test_a_bad_serve_variable_names_the_variable_and_the_range(clean_env: pytest.MonkeyPatch, setting: str) -> None:
    text, problem = BAD[setting]
    name = env_var(setting)
    clean_env.setenv(name, text)
    allowed = allowed_values(ServeSettings.model_fields[setting])
    with pytest.raises(SettingsError) as exc:
        ServeSettings.load()
    assert str(exc.value) == f"{name}: {text!r} {problem} (allowed: {allowed})"
    # given as a flag it is named as the flag, and the variable is not read
    flag = "--" + setting.replace("_", "-")
    with pytest.raises(SettingsError) as exc:
        ServeSettings.load({setting: flag}, **{setting: text})
    assert str(exc.value) == f"{flag}: {text!r} {problem} (allowed: {allowed})"


def test_empty_text_variables_are_unset(clean_env: pytest.MonkeyPatch) -> None:
    for setting in ("served_model_name", "api_key", "api_key_file", "trusted_key"):
        clean_env.setenv(env_var(setting), " ")
    settings = ServeSettings.load()
    assert (settings.served_model_name, settings.api_key, settings.trusted_key) == (None, None, None)
    assert settings.api_key_file is None and settings.api_keys() == ()


def test_the_cli_refuses_a_bad_variable_before_loading_anything(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("FLAVORKIT_MAX_QUEUE", "0")
    assert main(["serve", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err == "flavorkit: error: FLAVORKIT_MAX_QUEUE: '0' is out of range (allowed: whole number, at least 1)\n"
    # the flag wins over the variable: now the model is what fails
    assert main(["serve", "/no/such/model", "--max-queue", "3"]) == 2
    assert "cannot load /no/such/model: no such folder" in capsys.readouterr().err


def test_a_key_on_the_command_line_is_warned_about_and_a_key_file_is_not(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "/no/such/model", "--api-key", "s3cret"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "flavorkit serve: warning: a key given with --api-key is visible to other users of this machine "
        "(ps, /proc); prefer --api-key-file or $FLAVORKIT_API_KEY\n"
    )
    assert "s3cret" not in err
    assert main(["serve", "/no/such/model", "--api-key-file", str(KEYS)]) == 2
    assert "warning" not in capsys.readouterr().err
    assert ServeSettings.load(api_key="k", api_key_file=str(KEYS)).api_keys() == ("k", "alpha-key", "beta-key")


def test_create_app_refuses_a_bad_keyword_before_loading_anything(clean_env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("starlette")
    from flavorkit.serve import create_app

    message = "max_batch: 0 is out of range (allowed: whole number, at least 1)"
    with pytest.raises(SettingsError, match=re.escape(message)):
        create_app("/no/such/model", max_batch=0)
    with pytest.raises(ValueError, match="request_timeout"):  # a SettingsError is a ValueError, as before
        create_app("/no/such/model", request_timeout=-1)
    with pytest.raises(TypeError, match="unknown serve setting 'max_bach'"):
        create_app("/no/such/model", max_bach=2)


# -- flavorkit serve's flags are the settings model ---------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["serve"]
    return parser


def test_the_serve_flags_are_generated_from_the_settings_model() -> None:
    actions = {a.dest: a for a in _serve_parser()._actions if a.option_strings and a.dest != "help"}
    assert list(actions) == list(ServeSettings.model_fields)
    for setting, field in ServeSettings.model_fields.items():
        action = actions[setting]
        assert action.option_strings == ["--" + setting.replace("_", "-")]
        assert action.default == field.default
        assert action.help is not None and field.description is not None
        assert action.help.startswith(field.description) and env_var(setting) in action.help
        if field.default is not None:
            assert "default: %(default)s" in action.help
    help_text = _serve_parser().format_help()
    assert "(default: 8; or FLAVORKIT_MAX_BATCH)" in " ".join(help_text.split())


#: Flag values tried against every setting: the flag takes exactly what the model takes.
CANDIDATES = ("-1", "0", "0.5", "1", "3", "65535", "65536", "1e3", "abc", "request", "debug", "inf", "nan", "")


@pytest.mark.parametrize("setting", list(ServeSettings.model_fields))
def test_the_serve_flags_take_exactly_what_the_settings_take(setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _serve_parser()
    flag = "--" + setting.replace("_", "-")
    for text in CANDIDATES:
        try:
            ServeSettings(**{setting: text})
        except ValidationError:
            model_ok = False
        else:
            model_ok = True
        try:
            parsed = parser.parse_args(["m", flag, text])
        except SystemExit:
            flag_ok = False
        else:
            flag_ok = True
            assert parsed.serve_flags_given == {setting}
        capsys.readouterr()
        if text == "":  # a flag given empty is refused, so that it never hides its variable
            assert not flag_ok, flag
            continue
        assert flag_ok == model_ok, (flag, text)


# -- the user guide's table -----------------------------------------------------------------------------


def _guide_table() -> dict[str, list[str]]:
    """The rows of the user guide's environment table naming a FLAVORKIT_* variable: name -> other cells."""
    text = (ROOT / "docs" / "user-guide.md").read_text()
    section = text.split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        match = re.fullmatch(r"`(FLAVORKIT_\w+)`", cells[0]) if line.startswith("|") else None
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} is listed twice"
            rows[match.group(1)] = cells[1:]
    return rows


def test_the_user_guide_lists_exactly_the_declared_variables() -> None:
    rows = _guide_table()
    assert sorted(rows) == sorted(VARIABLES)
    for name, variable in VARIABLES.items():
        kind, default, meaning = rows[name]
        assert (kind, default) == (variable.type, variable.default), name
        assert meaning, name


@pytest.mark.parametrize("flag", ["--api-key-file", "--trusted-key", "--api-key"])
def test_an_empty_flag_is_refused_so_it_cannot_hide_its_variable(
    flag: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("FLAVORKIT_API_KEY_FILE", str(KEYS))  # "$UNSET" on the command line must not open the API
    with pytest.raises(SystemExit) as exc:
        main(["serve", "/no/such/model", flag, ""])
    assert exc.value.code == 2
    assert (
        f"argument {flag}: is empty; leave the flag out to use the default or the variable" in capsys.readouterr().err
    )


def test_a_key_file_is_read_once_so_a_pipe_works(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("# from a secret store\npiped-key\n"))
    writer.start()
    settings = ServeSettings.load(api_key_file=str(fifo))  # validated here, and again by every copy
    writer.join(timeout=30)
    assert settings.updated(max_batch=2).api_keys() == ("piped-key",)


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({}, None),  # no cgroup files: the affinity
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
        ({"cpu.max": "100000 100000\n"}, 1),  # v2, one CPU
        ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: rounded down
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: at least one thread
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ({"cpu.max": "garbage\n"}, None),  # unreadable: the affinity
    ],
)
def test_usable_cores_are_the_affinity_capped_by_a_cgroup_quota(
    tmp_path: Path, files: dict[str, str], cores: int | None
) -> None:
    import os

    from flavorkit.settings import usable_cores

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (affinity if cores is None else min(affinity, cores))


# -- scoped_env: variables set for a block, then put back exactly -----------------------------------

SET, UNSET = "SCOPED_ENV_TEST_SET", "SCOPED_ENV_TEST_UNSET"


@pytest.fixture
def before(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """SET holds "old", UNSET is not in the environment (monkeypatch cleans up if a test fails)."""
    monkeypatch.setenv(SET, "old")
    monkeypatch.delenv(UNSET, raising=False)
    return monkeypatch


def test_scoped_env_sets_then_restores_a_set_and_an_unset_variable(before: pytest.MonkeyPatch) -> None:
    with scoped_env({SET: "new", UNSET: "added"}):
        assert os.environ[SET] == "new"
        assert os.environ[UNSET] == "added"
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ, "unset before: removed, not left empty"


def test_scoped_env_none_unsets_for_the_block(before: pytest.MonkeyPatch) -> None:
    with scoped_env({SET: None, UNSET: None}):
        assert SET not in os.environ
        assert UNSET not in os.environ
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ


def test_scoped_env_restores_when_the_block_raises(before: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="in the block"), scoped_env({SET: "new", UNSET: "added"}):
        raise RuntimeError("in the block")
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ


def test_scoped_env_restores_what_the_block_changed(before: pytest.MonkeyPatch) -> None:
    with scoped_env({SET: "new", UNSET: "added"}):
        del os.environ[SET]
        os.environ[UNSET] = "changed in the block"
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ


def test_scoped_env_nested_restores_each_level(before: pytest.MonkeyPatch) -> None:
    with scoped_env({SET: "outer", UNSET: "outer"}):
        with scoped_env({SET: "inner", UNSET: None}):
            assert os.environ[SET] == "inner"
            assert UNSET not in os.environ
        assert os.environ[SET] == "outer"
        assert os.environ[UNSET] == "outer"
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ


def test_scoped_env_restores_the_values_set_before_one_that_cannot_be_set(before: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError), scoped_env({SET: "new", UNSET: "a\0b"}):  # a NUL byte: refused
        pytest.fail("the block does not run")
    assert os.environ[SET] == "old"
    assert UNSET not in os.environ


def test_scoped_env_leaves_other_variables_alone(before: pytest.MonkeyPatch) -> None:
    with scoped_env({}):
        os.environ[SET] = "changed in the block"
        os.environ[UNSET] = "added in the block"
    assert os.environ[SET] == "changed in the block", "not named: not put back"
    assert os.environ[UNSET] == "added in the block"
