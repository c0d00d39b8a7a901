#!/usr/bin/env bash
# `npm test` with two CPU hogs running beside it (stress-ng, from Debian's packages): the suite
# must hold on a busy laptop or CI runner, not only on a quiet machine. Usage: npm run test:busy
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v stress-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null
  else
    echo "stress-ng is needed: apt-get install stress-ng" >&2
    exit 1
  fi
fi
# As many hogs as the tests have cores (at least two), for no longer than the suite may take.
hogs=$(nproc); [ "$hogs" -lt 2 ] && hogs=2
stress-ng --cpu "$hogs" --timeout 900 --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT
npm test
