#!/usr/bin/env bash
# Install the Debian packages the test suite starts for real when they are missing and this
# machine can (root + apt-get): Prometheus and promtool, and Chromium (the chart page's
# browser test, driven by Playwright as /usr/bin/chromium). Never fatal: a test that needs a
# missing program then fails under CI, or skips saying why elsewhere.
set -uo pipefail
missing=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  missing+=(prometheus)
fi
if [[ ! -x /usr/bin/chromium ]]; then
  missing+=(chromium)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null; then
  echo "note: not installed: ${missing[*]} (needs root + apt-get: apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "installing Debian package(s) ${missing[*]} (for the Prometheus and browser tests)…" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
for pkg in "${missing[@]}"; do
  apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
    || echo "warning: apt-get install $pkg failed; the tests that need it will say why" >&2
done
exit 0
