"""Static reading of the Dockerfile and .dockerignore (there is no Docker engine here): the
sources of the Dockerfile's COPY lines, and whether a path of the build context is excluded
by .dockerignore as Docker decides it (patterns relative to the context root, ``*`` and ``?``
within one path element, ``**`` across any number of them, a pattern that matches a
directory excludes everything under it, ``!`` re-includes, the last matching line wins)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.support.ops import REPO


def copy_sources(dockerfile: Path = REPO / "Dockerfile") -> list[str]:
    """The context paths that the Dockerfile's COPY lines copy (flags like --chown skipped)."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if line.split(maxsplit=1)[:1] == ["COPY"]:  # one line each (no continuation here)
            args = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            sources.extend(args[:-1])
    return sources


def _regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """The rules of one .dockerignore file."""

    def __init__(self, path: Path = REPO / ".dockerignore") -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self.rules.append((keep, _regex(pattern)))

    def excludes(self, path: str) -> bool:
        """Whether ``path`` (relative to the context root) stays out of the build context."""
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, rule in self.rules:
            if any(rule.fullmatch(p) for p in prefixes):
                excluded = not keep
        return excluded
