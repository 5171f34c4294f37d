"""Packaging: the wheel pip builds from what the Dockerfile copies carries ``barstream/py.typed``
(PEP 561: consumers' ``mypy --strict`` checks against ``barstream.client``), the MIT licence as
an SPDX expression with its file, and no top-level ``shared`` or ``services``; the build prints
no setuptools deprecation; constraints.txt pins every package of the runtime + dev dependency
graph (and this venv holds exactly those versions); ``make venv`` installs with it and is
redone when it changes."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.docker import copy_sources
from tests.support.ops import REPO

CONSTRAINTS = REPO / "constraints.txt"


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line is ``name==version``."""
    out: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert m, f"constraints.txt: {line!r} is not name==version"
        out[canonicalize_name(m[1])] = m[2]
    return out


def test_wheel_ships_py_typed_and_the_license_and_only_barstream(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for source in copy_sources():  # exactly the Docker build's inputs
        if (REPO / source).is_dir():
            shutil.copytree(
                REPO / source,
                src / source,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(REPO / source, src / source)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")  # the venv's pinned setuptools; no download
    done = subprocess.run(
        [*cmd, "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "BuildBackendWarning" not in output and "deprecated" not in output.lower(), output
    (wheel,) = (tmp_path / "dist").glob("barstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"barstream", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(top)
    for member in (
        "barstream/py.typed",
        "barstream/client.py",
        "barstream/shared/store.py",
        "barstream/services/gateway/client.py",
        "barstream/resources/supervisord.conf",
    ):
        assert member in names, member
    dist_info = next(n.split("/", 1)[0] for n in names if ".dist-info/" in n)
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT\n" in metadata and "License-File: LICENSE\n" in metadata


def test_constraints_pin_the_whole_runtime_and_dev_graph() -> None:
    pinned = pins()
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("barstream", frozenset({"dev"}))]
    while todo:
        name, extras = todo.pop()
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            active = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in extras)
            if not active:
                continue
            dep = canonicalize_name(req.name)
            assert dep in pinned, f"{dep} (required by {name}: {text}) is not in constraints.txt"
            assert req.specifier.contains(pinned[dep], prereleases=True), (
                f"constraints.txt pins {dep}=={pinned[dep]}, outside {name}'s {req.specifier}"
            )
            installed = importlib.metadata.version(req.name)
            assert installed == pinned[dep], (
                f"{dep} {installed} is installed, constraints.txt pins {pinned[dep]} "
                "(make venv installs the pins)"
            )
            key = f"{dep}[{','.join(sorted(req.extras))}]"
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras) or frozenset({""})))
    assert {"numpy", "pyzmq", "pytest", "mypy", "pandas"} <= {k.split("[")[0] for k in seen}


def test_make_venv_installs_with_the_constraints_and_follows_them(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        raise AssertionError("make is not installed (the README's commands need it)")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than pyproject.toml and constraints.txt
    make = ["make", "-n", "-C", str(REPO), f"VENV={venv}", f"{venv}/.installed"]
    fresh = subprocess.run(make, capture_output=True, text=True, timeout=60, check=True)
    assert "pip install" not in fresh.stdout, fresh.stdout
    changed = subprocess.run(
        [*make, "-W", "constraints.txt"], capture_output=True, text=True, timeout=60, check=True
    )
    installs = [line for line in changed.stdout.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs), (
        changed.stdout
    )
    assert any("-e '.[dev]'" in line for line in installs), changed.stdout
