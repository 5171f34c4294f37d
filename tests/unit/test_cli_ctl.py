"""barstream ctl: bare program names become barstream:NAME before supervisorctl sees them;
every other word is passed as given (the real supervisorctl run is in
tests/integration/test_ops_pipeline.py)."""

from __future__ import annotations

import pytest

from barstream.shared.config import SERVICES
from barstream.supervise import ctl_args


@pytest.mark.parametrize("name", [*SERVICES, "fake_upstream"])
def test_bare_program_names_are_mapped(name: str) -> None:
    assert ctl_args(["restart", name]) == ["restart", f"barstream:{name}"]
    assert ctl_args(["tail", "-f", name, "stderr"]) == ["tail", "-f", f"barstream:{name}", "stderr"]


def test_other_words_are_left_alone() -> None:
    for args in (
        ["status"],
        ["restart", "all"],  # supervisorctl's own "every program"
        ["stop", "barstream:gateway"],
        ["start", "barstream:*"],
        ["status", "barstream_events"],
        ["signal", "HUP", "nonsense"],
        ["shutdown"],
        [],
    ):
        assert ctl_args(args) == args
    assert ctl_args(["stop", "gateway", "barstream:resampler", "downloader"]) == [
        "stop",
        "barstream:gateway",
        "barstream:resampler",
        "barstream:downloader",
    ]
