#!/usr/bin/env bash
# Tools the tests need that are no Python package, in .tools/bin (ignored by git). Today one:
# promtool, Prometheus' linter, which tests/supervisor/observe/test_promtool.py runs on a live
# /metrics. It is taken from Debian's `prometheus` package without installing it (no root needed:
# `apt-get download` only fetches the .deb). Never fails: when a tool cannot be had, one line on
# stderr says what is missing, and the test needing it decides (it skips, or fails under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v promtool >/dev/null 2>&1 || [[ -x .tools/bin/promtool ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "tools: no promtool: not on PATH, and no apt-get/dpkg-deb to fetch Debian's prometheus package" >&2
  exit 0
fi

echo "tools: fetching promtool from Debian's prometheus package" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download -qq prometheus) >"$tmp/apt.log" 2>&1; }

if ! download; then
  # Usually no package lists yet (a fresh container): refresh them when we may.
  if [[ $(id -u) -ne 0 ]] || ! apt-get update -qq >/dev/null 2>&1 || ! download; then
    reason=$(grep -E '^(E|W):' "$tmp/apt.log" | tail -n 1 || true)
    echo "tools: no promtool: 'apt-get download prometheus' failed${reason:+ ($reason)}" >&2
    exit 0
  fi
fi

debs=("$tmp"/prometheus_*.deb)
if [[ ! -f "${debs[0]}" ]] || ! dpkg-deb -x "${debs[0]}" "$tmp/root" 2>/dev/null; then
  echo "tools: no promtool: could not unpack Debian's prometheus package" >&2
  exit 0
fi
if [[ ! -x "$tmp/root/usr/bin/promtool" ]]; then
  echo "tools: no promtool: Debian's prometheus package has no usr/bin/promtool" >&2
  exit 0
fi
mkdir -p .tools/bin
cp "$tmp/root/usr/bin/promtool" .tools/bin/promtool.partial
mv .tools/bin/promtool.partial .tools/bin/promtool
