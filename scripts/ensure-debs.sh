#!/usr/bin/env bash
# Install the Debian packages the test suite starts for real (Prometheus and promtool) when
# they are missing and this machine can (root + apt-get). Never fatal: a test that needs a
# missing program then fails under CI, or skips saying why elsewhere.
set -uo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null; then
  echo "note: prometheus is not installed (needs root + apt-get: apt-get install prometheus)" >&2
  exit 0
fi
echo "installing Debian package prometheus (for the Prometheus integration tests)…" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
  || echo "warning: apt-get install prometheus failed; those tests will say why" >&2
exit 0
