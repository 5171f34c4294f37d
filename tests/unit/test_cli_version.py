"""``barstream --version`` prints ``barstream <version>`` (the installed distribution's, which
is pyproject.toml's) and exits 0, as the console script and as ``python -m barstream``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from barstream import cli
from tests.support.ops import REPO
from tests.support.ops import cli as run_cli


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_version_is_the_installed_distributions_and_pyprojects() -> None:
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"barstream {project_version()}\n"
    assert importlib.metadata.version("barstream") == project_version()


def test_console_script_prints_the_version() -> None:
    script = Path(sys.executable).with_name("barstream")
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable} (pip install -e . makes it)")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"barstream {project_version()}\n"), done.stderr


def test_version_in_process_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"barstream {project_version()}\n"
    assert "--version" in cli.build_parser().format_help()
