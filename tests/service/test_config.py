"""service/config.py: one declaration of the GANFORGE_* variables, parsed by Settings.from_env, read once per
process, and the README table and CLI generated from it."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import config
from service.config import VARIABLES, Settings, SettingsError, settings

REPO = Path(__file__).resolve().parents[2]


def test_readme_table_is_generated_from_the_declaration():
    readme = (REPO / "README.md").read_text()
    assert config.with_table(readme) == readme, "README.md's env-table is stale: run python -m service.config --write"
    assert readme.count(config.TABLE_START) == 1 and readme.count(config.TABLE_END) == 1


def test_declared_defaults_are_the_settings_defaults():
    declared = {v.field for v in VARIABLES}
    assert declared == {f.name for f in dataclasses.fields(Settings)} - {"model_precision"}  # set by GANFORGE_PRECISION
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)
    assert all(re.fullmatch(r"GANFORGE_[A-Z_]+", v.name) for v in VARIABLES)
    defaults = Settings()
    for v in VARIABLES:
        assert getattr(defaults, v.field) == v.default, v.name
    assert Settings.from_env({}) == defaults
    assert (defaults.threads, defaults.batch_max, defaults.log_format) == (4, 0, "text")  # what the docs had drifted on


@pytest.mark.parametrize("var", [v for v in VARIABLES if v.kind not in ("path", "text", "hosts", "webhook_secret", "db_url")],
                         ids=lambda v: v.name)  # text-like: unset is their default (tests/service/test_jobs.py parses them)
def test_a_default_written_out_parses_to_itself(var):
    written = {True: "1", False: "0"}.get(var.default, str(var.default)) if var.kind == "bool" else str(var.default)
    assert Settings.from_env({var.name: written}) == Settings()


@pytest.mark.parametrize("env, message", [
    ({"GANFORGE_MAX_N": "zero"}, "GANFORGE_MAX_N='zero' is not an integer"),
    ({"GANFORGE_MAX_N": "0"}, "GANFORGE_MAX_N=0 must be >= 1"),
    ({"GANFORGE_TILE_OVERLAP": "-2"}, "GANFORGE_TILE_OVERLAP=-2 must be >= -1"),
    ({"GANFORGE_TIMEOUT_S": "soon"}, "GANFORGE_TIMEOUT_S='soon' is not a number"),
    ({"GANFORGE_TIMEOUT_S": "0.5"}, "GANFORGE_TIMEOUT_S=0.5 must be >= 1.0"),
    ({"GANFORGE_RELOAD_POLL_S": "nan"}, "GANFORGE_RELOAD_POLL_S=nan must be >= 0.0"),
    ({"GANFORGE_METRICS": "maybe"}, "GANFORGE_METRICS='maybe' must be 0 or 1"),
    ({"GANFORGE_DEVICE": " TPU "}, "GANFORGE_DEVICE='tpu' must be one of auto, cpu, cuda"),
    ({"GANFORGE_LOG_FORMAT": "xml"}, "GANFORGE_LOG_FORMAT='xml' must be one of text, json"),
    ({"GANFORGE_PRECISION": "int8,fp32"}, "GANFORGE_PRECISION='int8,fp32' gives more than one default precision"),
    ({"GANFORGE_PRECISION": "a:int8,a:fp32"}, "GANFORGE_PRECISION: model 'a' is named twice"),
    ({"GANFORGE_BACKEND": "openvino", "GANFORGE_DEVICE": "cuda"}, "GANFORGE_BACKEND=openvino runs on the CPU"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(message)


def test_values_parse_as_before():
    s = Settings.from_env({"GANFORGE_MODELS_DIR": " ~/m ", "GANFORGE_AUTH_TOKEN": " t ", "GANFORGE_MAX_UPLOAD_BYTES": "1_000",
                           "GANFORGE_TIMEOUT_S": "30", "GANFORGE_READY_REQUIRES_ALL": "yes", "GANFORGE_METRICS": "off",
                           "GANFORGE_BACKEND": "OpenVINO", "GANFORGE_PRECISION": "int8, colorize:fp32"})
    assert s.models_dir.is_absolute() and s.models_dir.name == "m" and "~" not in str(s.models_dir)
    assert (s.auth_token, s.max_upload_bytes, s.timeout_s) == (" t ", 1000, 30.0)  # the token is taken as given
    assert (s.ready_requires_all, s.metrics, s.backend) == (True, False, "openvino")
    assert (s.precision, s.model_precision) == ("int8", (("colorize", "fp32"),))
    assert Settings.from_env({"GANFORGE_AUTH_TOKEN": "  "}).auth_token is None


def test_settings_are_read_once_per_process(monkeypatch):
    settings.cache_clear()
    try:
        monkeypatch.setenv("GANFORGE_MAX_N", "7")
        first = settings()
        monkeypatch.setenv("GANFORGE_MAX_N", "9")
        assert settings() is first and first.max_n == 7
    finally:
        settings.cache_clear()


def test_nothing_else_reads_the_environment_for_settings():
    """service/ and soak/ go through settings() (or are handed a Settings); only config.py parses the environment."""
    offenders = []
    for package in ("service", "soak"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "service" / "config.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "from_env(" in line or re.search(r"(environ|getenv)\S*\(?\s*[\"']GANFORGE_", line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_cli_prints_checks_and_writes(tmp_path, capsys):
    assert config.main([]) == 0
    plain = capsys.readouterr().out
    assert all(f"{v.name} [" in plain for v in VARIABLES) and "](#" not in plain and "`" not in plain
    assert config.main(["--markdown"]) == 0
    assert capsys.readouterr().out == config.markdown_table()

    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{config.TABLE_START}\n| old |\n{config.TABLE_END}\nafter\n")
    assert config.main(["--check", "--readme", str(stale)]) == 1
    assert config.main(["--write", "--readme", str(stale)]) == 0
    assert stale.read_text() == f"intro\n{config.TABLE_START}\n{config.markdown_table()}{config.TABLE_END}\nafter\n"
    assert config.main(["--check", "--readme", str(stale)]) == 0
    stale.write_text("no markers\n")
    assert config.main(["--write", "--readme", str(stale)]) == 1
    assert "env-table" in capsys.readouterr().err and stale.read_text() == "no markers\n"


def test_python_dash_m_service_config():
    proc = subprocess.run([sys.executable, "-m", "service.config", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
