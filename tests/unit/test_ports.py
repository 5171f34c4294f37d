"""The ports of a run: checked free before it starts (a taken one named by its key), moved
by --port-offset; a service or the fake upstream that meets a taken port exits 2 naming it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from barstream import cli, ports
from barstream.shared import config
from barstream.shared.errors import BindError
from barstream.shared.metrics import Metrics
from tests.support.ops import REPO, free_port, pipeline_config, write_config


@contextmanager
def listening(port: int = 0, host: str = "127.0.0.1") -> Iterator[int]:
    """A socket listening on ``host:port`` (0: a free one) while the block runs (with
    SO_REUSEADDR, as servers bind: it may take a port left in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen()
        yield int(s.getsockname()[1])


def small_config(tmp_path: Path) -> config.Config:
    return config.from_dict(
        pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port()), source="c.toml"
    )


def test_a_free_run_passes(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    assert ports.unavailable(cfg, fake=True, events_port=free_port()) == []


def test_a_listening_port_is_named_by_its_key(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    port = cfg.endpoints("resampler").metrics_port
    assert port
    with listening(port):
        found = ports.unavailable(cfg, fake=True, events_port=free_port())
    assert [e.key for e in found] == ["resampler.endpoints.metrics_port"]
    err = found[0]
    assert isinstance(err, BindError) and err.in_use and err.value == port
    text = str(err)
    assert f"127.0.0.1:{port}" in text and "--port-offset N" in text, text
    assert text.startswith("c.toml: resampler.endpoints.metrics_port = ")


def test_every_kind_of_port_is_checked(tmp_path: Path) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    with listening() as feed, listening() as publish, listening() as fake, listening() as events:
        data["downloader"]["endpoints"]["feed"] = f"tcp://127.0.0.1:{feed}"
        data["gateway"]["publish"] = f"tcp://0.0.0.0:{publish}"
        data["fake_upstream"]["port"] = fake
        data["downloader"]["base_url"] = f"http://127.0.0.1:{fake}"
        cfg = config.from_dict(data)
        keys = [e.key for e in ports.unavailable(cfg, fake=True, events_port=events)]
        assert keys == [
            "downloader.endpoints.feed",
            "gateway.publish",
            "fake_upstream.port",
            "--events-port",
        ]
        # without the fake upstream (barstream run without --fake-upstream) its port is not ours
        assert "fake_upstream.port" not in [
            e.key for e in ports.unavailable(cfg, fake=False, events_port=events)
        ]


def test_two_keys_on_one_port_are_named(tmp_path: Path) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    port = data["aggregator"]["endpoints"]["metrics_port"]
    data["gateway"]["requests"] = f"tcp://127.0.0.1:{port}"
    found = ports.unavailable(config.from_dict(data), fake=True, events_port=free_port())
    assert [(e.key, e.in_use) for e in found] == [("gateway.requests", False)]
    assert "aggregator.endpoints.metrics_port" in str(found[0])


def test_a_port_left_in_time_wait_is_free_as_it_is_to_the_services() -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        conn.close()  # the server side closes first: its port is left in TIME_WAIT
        client.close()
    assert ports.probe("127.0.0.1", port) is None
    with listening(port):
        err = ports.probe("127.0.0.1", port)
    assert err is not None and "in use" in str(err)


def test_the_offset_suggested_frees_every_port(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    port = cfg.endpoints("gateway").metrics_port
    assert port
    with listening(port):
        n = ports.suggest_offset(cfg, fake=True, events_port=free_port())
        assert n is not None and n > 0
        lines = ports.report(ports.unavailable(cfg, fake=True, events_port=free_port()), "demo", n)
    assert len(lines) == 2 and lines[0].startswith("demo: c.toml: gateway.endpoints.metrics_port")
    assert lines[1] == f"demo: every port of the run is free now with --port-offset {n}"


def test_events_port_follows_the_offset() -> None:
    cfg = config.from_dict({"pipeline": {"port_offset": 100}})
    assert ports.events_port(cfg, 9100) == 9200
    assert ports.events_port(cfg, 0) == 0
    assert ports.events_port(config.default(), 9100) == 9100


def test_offset_config_writes_the_key_and_an_absolute_data_dir(tmp_path: Path) -> None:
    src = tmp_path / "c.toml"
    src.write_text('[pipeline]\ndata_dir = "var/x"\n[gateway]\npublish = "tcp://127.0.0.1:7000"\n')
    out = ports.offset_config(src, 30, tmp_path / "var")
    assert out == tmp_path / "var" / "c.port-offset-30.toml"
    cfg = config.load(out)
    assert cfg.pipeline.port_offset == 30 and Path(cfg.pipeline.data_dir).is_absolute()
    assert cfg.gateway.publish == "tcp://127.0.0.1:7030"
    assert cfg.endpoints("gateway").metrics_port == 9135


def test_a_bad_port_offset_flag_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["run", "--port-offset", "-5", "--var", str(tmp_path / "var")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pipeline.port_offset = -5" in err and "with --port-offset -5" in err


def test_run_with_a_taken_port_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    path = write_config(tmp_path / "c.toml", data)
    port = data["transformer"]["endpoints"]["metrics_port"]
    var = tmp_path / "var"
    with listening(port):
        code = cli.main(["run", "-c", str(path), "--var", str(var), "--events-port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"barstream run: {path}: transformer.endpoints.metrics_port = {port}" in err
    assert "another barstream or program holds it" in err
    assert not (var / "log").exists()  # supervisord was never started


# -- a bind failure met by a service or the fake upstream itself ---------------------------


def test_metrics_serve_on_a_taken_port_names_the_key() -> None:
    with listening() as port, pytest.raises(BindError) as e:
        Metrics("resampler").serve(port, path="c.toml")
    assert e.value.key == "resampler.endpoints.metrics_port" and e.value.in_use
    assert f"127.0.0.1:{port}" in str(e.value) and "--port-offset" in str(e.value)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_service_whose_metrics_port_is_taken_exits_2_naming_the_key(tmp_path: Path) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    path = write_config(tmp_path / "c.toml", data)
    port = data["aggregator"]["endpoints"]["metrics_port"]
    with listening(port):
        done = _run("barstream.services.aggregator", "--config", str(path), "--drain")
    assert done.returncode == 2, done.stderr
    assert f"aggregator.endpoints.metrics_port = {port}" in done.stderr
    assert "I/O error" not in done.stderr and "checkpoint" not in done.stderr


def test_the_fake_upstream_on_a_taken_port_exits_2_naming_the_key(tmp_path: Path) -> None:
    with listening() as port:
        data = pipeline_config(tmp_path, tmp_path / "data", fake_port=port)
        path = write_config(tmp_path / "c.toml", data)
        done = _run("barstream.fake", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert f"fake_upstream.port = {port}" in done.stderr
    assert "another barstream or program holds it" in done.stderr
