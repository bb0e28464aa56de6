from pathlib import Path

import pytest

from pipelines.cli.main import _parser, main
from pipelines.cli.run import _RUN_FLAGS
from pipelines.settings import Settings

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_readme_documents_every_setting_env_var() -> None:
    for name in Settings.model_fields:
        assert f"`LIFECYCLE_{name.upper()}`" in README, name


def test_run_help_shows_the_env_var_behind_each_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in _RUN_FLAGS.values():
        assert f"[env: LIFECYCLE_{name.upper()}]" in out


def test_env_vars_configure_settings_and_flags_override_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_SHARDS", "7")
    monkeypatch.setenv("LIFECYCLE_STORE_PASSWORD", "s3cret")
    s = Settings()
    assert s.shards == 7
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert Settings(shards=2).shards == 2
    monkeypatch.setenv("LIFECYCLE_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}')
    k = Settings().kafka_config
    assert k["sasl.password"].get_secret_value() == "hunter2"
    assert "hunter2" not in repr(Settings())


def test_invalid_setting_exits_3_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--shards", "0", "--metrics-port", "0"]) == 3
    assert "shards" in capsys.readouterr().err
