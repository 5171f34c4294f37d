#!/usr/bin/env bash
# Run pytest and fail when it collected no test (pytest exits 5): a suite that runs
# nothing must never pass silently.
set -uo pipefail
py="$1"; shift
marker="$1"; shift || true
if [[ "$marker" == "-m" ]]; then
  expr="$1"; shift
  "$py" -m pytest -m "$expr" "$@"
else
  "$py" -m pytest "$marker" "$@"
fi
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit $rc
