"""The gateway's wiring in-process: a socket that cannot bind names its configuration key."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from barstream.services.gateway.service import Gateway
from barstream.shared import config
from barstream.shared.errors import BindError, ConfigError


@pytest.mark.parametrize("key", ["publish", "requests"])
def test_bind_failure_names_the_key_and_what_to_do(tmp_path: Path, ipc_dir: Path, key: str) -> None:
    ctx = zmq.Context()
    holder = ctx.socket(zmq.ROUTER)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind("tcp://127.0.0.1:0")
    taken = holder.getsockopt_string(zmq.LAST_ENDPOINT)
    other = "publish" if key == "requests" else "requests"
    cfg = config.from_dict(
        {
            "pipeline": {"data_dir": str(tmp_path / "data"), "symbols": ["EUR-USD"]},
            "gateway": {key: taken, other: f"ipc://{ipc_dir}/{other}"},
        }
    )
    try:
        with pytest.raises(BindError) as e:
            Gateway(cfg, serve_metrics=False)
        assert isinstance(e.value, ConfigError) and e.value.key == f"gateway.{key}"
        assert str(e.value).startswith(f"gateway.{key} = {taken!r}: Address already in use")
        assert f"or set gateway.{key} to a free address" in str(e.value)
    finally:
        holder.close(linger=0)
        ctx.destroy(linger=0)
