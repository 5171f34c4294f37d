"""Every barstream subcommand has --help; usage and configuration errors exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from barstream import cli
from tests.support.ops import cli as run_cli

COMMANDS = [
    "demo",
    "run",
    "stop",
    "ctl",
    "status",
    "backfill",
    "rebuild",
    "verify",
    "export",
    "sql",
    "tail",
    "history",
]


def test_top_level_help_lists_every_command() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"barstream {command}" in out and "usage:" in out


def test_module_entry_point_runs() -> None:
    done = run_cli("verify", "--help")
    assert done.returncode == 0 and "FAULT" in done.stdout


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["export"])  # SYMBOL TIMEFRAME missing
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["backfill", "--start", "2026-13-01", "--end", "2026-01-02"])
    assert e.value.code == 2
    assert "not a date" in capsys.readouterr().err


def test_config_error_exits_2_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[downloader]\nrequests_per_second = -1\n")
    assert cli.main(["status", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "downloader.requests_per_second" in err and "-1" in err
    assert cli.main(["status", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_tail_and_history_are_mounted_from_the_gateway_cli() -> None:
    gateway_cli, why = cli._gateway_cli()
    assert gateway_cli is not None, f"services/gateway/cli.py does not import: {why}"
    parser = cli.build_parser()
    args = parser.parse_args(["tail", "EUR-USD", "1m", "--count", "1"])
    assert args.func is gateway_cli.run_tail
