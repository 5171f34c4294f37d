"""One demo pipeline for every HTTP API test module here (tests/support/api_demo.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api_demo import Demo, closed_ranges, running_demo


@pytest.fixture(scope="package")
def demo() -> Iterator[Demo]:
    with running_demo() as d:
        yield d


@pytest.fixture(scope="package")
def closed(demo: Demo) -> dict[str, Any]:
    return closed_ranges(demo)
