#!/usr/bin/env bash
# The README's second command (and CI's): set up (once), then the test suite; extra args go to pytest.
# Runs every test that needs no GPU and is not marked slow, the local multi-node cluster tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then   # the code sandbox's isolation layer (Debian: bubblewrap)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing bubblewrap" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null \
      || echo "[setup] could not install bubblewrap; sandbox tests run with reduced isolation" >&2
  else
    echo "[setup] bwrap not found (install the bubblewrap package); sandbox tests run with reduced isolation" >&2
  fi
fi
bash scripts/setup.sh
.venv/bin/ruff check --quiet . || { echo "ruff check failed: fix the lines above (config in pyproject.toml)" >&2; exit 1; }
set +e
.venv/bin/python -m pytest -m "not slow and not gpu" "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "no tests were collected: treating as a failure" >&2
  exit 1
fi
exit "$rc"
