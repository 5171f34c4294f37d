"""docker-compose.yml, supervisord.conf, config/compose*.toml and deploy/prometheus.yml stay in
step, and .dockerignore with the Dockerfile (there is no Docker engine here, so
``docker compose config`` and ``docker build`` cannot check them)."""

from __future__ import annotations

import configparser
import datetime as dt
import shlex
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from barstream.shared import config as config_mod
from barstream.shared.config import SERVICES, UPSTREAM_OF
from tests.support.docker import DockerIgnore, copy_sources

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extras (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = {
    **{s: f"barstream.services.{s}" for s in SERVICES},
    "fake_upstream": "barstream.fake",
    "api": "barstream.services.api",
}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def supervisord() -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    cp.read(REPO / "supervisord.conf")
    return cp


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_same_programs_and_module_command_lines() -> None:
    cp = supervisord()
    services = compose()["services"]
    sup_programs = {s.split(":", 1)[1] for s in cp.sections() if s.startswith("program:")}
    assert sup_programs == set(PROGRAMS) == set(services)
    assert set(cp.get("group:barstream", "programs").split(",")) == set(PROGRAMS)
    for name, module in PROGRAMS.items():
        sup_cmd = shlex.split(cp.get(f"program:{name}", "command"))
        assert sup_cmd == [
            "%(ENV_BARSTREAM_PYTHON)s",
            "-m",
            module,
            "--config",
            "%(ENV_BARSTREAM_CONFIG)s",
        ]
        assert cp.get(f"program:{name}", "directory") == "%(ENV_BARSTREAM_HOME)s"
        cmd = services[name]["command"]
        assert cmd[:4] == ["python", "-m", module, "--config"], name
        default = "config/compose-demo.toml" if name == "fake_upstream" else "config/compose.toml"
        assert cmd[4] == f"${{BARSTREAM_CONFIG:-{default}}}", name


def test_supervisord_program_policy() -> None:
    cp = supervisord()
    for name in PROGRAMS:
        sec = f"program:{name}"
        assert cp.get(sec, "stopsignal") == "TERM"
        assert int(cp.get(sec, "stopwaitsecs")) >= 10
        assert cp.get(sec, "autorestart") == "unexpected"
        assert cp.get(sec, "stdout_logfile").startswith("%(ENV_BARSTREAM_VAR)s/log/")
    assert cp.get("program:fake_upstream", "autostart") == "%(ENV_BARSTREAM_DEMO)s"
    listener = "eventlistener:barstream_events"
    assert cp.get(listener, "events") == "PROCESS_STATE"
    assert "-m barstream.supervisor_events" in cp.get(listener, "command")
    assert cp.get("unix_http_server", "file") == "%(ENV_BARSTREAM_VAR)s/run/supervisor.sock"
    assert cp.get("unix_http_server", "chmod") == "0700"
    assert cp.get("include", "files") == "%(ENV_BARSTREAM_VAR)s/run/supervisord.d/*.conf"


def test_compose_ports_match_compose_config() -> None:
    services = compose()["services"]
    for path in ("config/compose.toml", "config/compose-demo.toml"):
        cfg = config_mod.load(REPO / path)
        assert cfg.pipeline.host == "0.0.0.0"
        for name in SERVICES:
            ep = cfg.endpoints(name)
            assert ep.feed == f"tcp://0.0.0.0:{port_of(ep.feed)}", (path, name)
            assert ep.metrics_host == "0.0.0.0", (path, name)
            exposed = {int(p) for p in services[name]["expose"]}
            assert exposed == {port_of(ep.feed), ep.metrics_port}, (path, name)
            published = {int(str(p).split(":")[0]) for p in services[name].get("ports", [])}
            assert ep.metrics_port in published, (path, name)
            up = UPSTREAM_OF.get(name)
            if up is not None:  # connects to its upstream by service name
                assert ep.upstream == f"tcp://{up}:{port_of(cfg.endpoints(up).feed)}", (path, name)
        # the gateway's second upstream, the features stage's feed, by service name too
        features_feed = port_of(cfg.endpoints("features").feed)
        assert cfg.gateway.features_upstream == f"tcp://features:{features_feed}", path
        assert {port_of(cfg.gateway.publish), port_of(cfg.gateway.requests)} <= {
            int(str(p).split(":")[0]) for p in services["gateway"]["ports"]
        }
        # the API container reaches the gateway by service name
        assert cfg.api.gateway_publish == f"tcp://gateway:{port_of(cfg.gateway.publish)}", path
        assert cfg.api.gateway_requests == f"tcp://gateway:{port_of(cfg.gateway.requests)}", path
        assert f"{cfg.api.port}:{cfg.api.port}" in services["api"]["ports"], path
    demo = config_mod.load(REPO / "config/compose-demo.toml")
    url = urllib.parse.urlsplit(demo.downloader.base_url)
    assert url.hostname == "fake_upstream" and url.port == demo.fake_upstream.port
    assert [str(demo.fake_upstream.port)] == services["fake_upstream"]["expose"]
    assert services["fake_upstream"]["profiles"] == ["demo"]


def test_one_volume_per_service_no_shared_data() -> None:
    doc = compose()
    services = doc["services"]
    cfg = config_mod.load(REPO / "config/compose.toml")
    owner: dict[str, str] = {}
    for name in SERVICES:
        mounts = {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"]}
        assert str(cfg.data_dir(name)) in mounts.values(), name
        for volume in mounts:
            assert volume in doc["volumes"], volume
            assert owner.setdefault(volume, name) == name, (
                f"{volume} shared by {owner[volume]}, {name}"
            )
    raw = {v.split(":")[1] for v in services["downloader"]["volumes"]}
    assert f"{cfg.pipeline.data_dir}/raw" in raw  # the raw cache lives beside the service dir
    dockerfile = (REPO / "Dockerfile").read_text()
    for name in (*SERVICES, "raw"):
        assert f"/data/{name}" in dockerfile  # mount points owned by the container's user


def test_prometheus_targets_match_configs() -> None:
    doc = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    targets = {
        t for job in doc["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for path in ("config/demo.toml", "config/live.toml"):
        cfg = config_mod.load(REPO / path)
        for name in SERVICES:
            assert f"127.0.0.1:{cfg.endpoints(name).metrics_port}" in targets, (path, name)
    from barstream.supervise import DEFAULT_EVENTS_PORT

    assert f"127.0.0.1:{DEFAULT_EVENTS_PORT}" in targets


def test_demo_config_is_consistent_with_the_fake() -> None:
    from barstream.fake.cli import check, sim_start_ms

    cfg = config_mod.load(REPO / "config/demo.toml")
    check(cfg)  # base_url points at the fake's port
    start_ms = sim_start_ms(cfg)
    sim_day = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).date()
    weeks = (sim_day - cfg.pipeline.start_date).days / 7
    assert 2 <= weeks <= 5, "history starts a few weeks before the fake's simulated now"
    assert sim_day.weekday() < 5, "the simulated now is a weekday: live minutes form"
    assert len(cfg.pipeline.symbols) >= 3 and cfg.pipeline.sides == ["BID", "ASK"]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignore = DockerIgnore()
    for path in (
        ".venv",
        ".venv/lib/python3.11/site-packages/numpy/__init__.py",
        "var",
        "var/data/raw/EUR-USD/BID/2026/1/5.json",
        ".git",
        ".git/objects/pack/x.pack",
        "build/lib/barstream/cli.py",
        "dist/barstream-0.1.0-py3-none-any.whl",
        "barstream.egg-info/PKG-INFO",
        "bench/out/rebuild.json",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v",
        ".hypothesis/examples/x",
        "shared/__pycache__/store.cpython-311.pyc",
        "services/gateway/__pycache__/query.cpython-311.pyc",
    ):
        assert ignore.excludes(path), f".dockerignore lets {path} into the build context"


def test_dockerfile_copies_what_the_install_needs_and_dockerignore_keeps_it() -> None:
    ignore = DockerIgnore()
    sources = copy_sources()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {
        project["project"]["readme"],
        *project["project"]["license-files"],
        "pyproject.toml",
        "constraints.txt",  # pip install -c constraints.txt .
        *project["tool"]["setuptools"]["package-dir"].values(),
        "config",  # the services' --config config/compose.toml
        "supervisord.conf",  # package data (barstream/resources/supervisord.conf links to it)
    }
    assert needed <= set(sources), f"the Dockerfile does not COPY {needed - set(sources)}"
    copied = [REPO / source for source in sources]
    for top in copied:
        assert top.exists(), f"the Dockerfile copies {top.name}, which does not exist"
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not ignore.excludes(rel), f".dockerignore drops {rel}, which is copied"
        for link in [p for p in (top, *top.rglob("*")) if p.is_symlink()]:
            # barstream/shared -> ../shared, barstream/resources/supervisord.conf -> …: the
            # package data the wheel needs must be in the image too, not a dangling link
            target = link.resolve()
            assert any(target == c or c in target.parents for c in copied), (
                f"{link.relative_to(REPO)} points at {target.relative_to(REPO)}, "
                "which the Dockerfile does not COPY"
            )
    assert "pip install -c constraints.txt ." in (REPO / "Dockerfile").read_text()
