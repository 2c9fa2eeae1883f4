#!/usr/bin/env bash
# A Prometheus binary for tests/integration/test_prometheus.py, installed in user space: Debian's
# `prometheus` package is downloaded (not installed) and only its binary, a static Go program, is
# unpacked into DEST_DIR (default: .venv/bin). Nothing is installed system-wide and nothing runs as root.
#
#   scripts/install_prometheus.sh [DEST_DIR]          (or: make install-prometheus)
#
# Needs apt-get and dpkg-deb (Debian/Ubuntu) with current package lists. Elsewhere, any Prometheus 2.x
# on PATH will do (e.g. `brew install prometheus`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$repo/.venv/bin}"

found="$(command -v prometheus || true)"
[[ -n "$found" && -x "$found" ]] || found="$dest/prometheus"
if [[ -x "$found" ]]; then
    echo "prometheus is already installed: $found ($("$found" --version 2>&1 | head -1))"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "install_prometheus: $tool is missing; put any Prometheus 2.x on PATH instead" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download prometheus); then
    echo "install_prometheus: apt-get download failed; if the package lists are missing or old, run" \
        "'apt-get update' as root (or with sudo), then this again" >&2
    exit 1
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$dest"
install -m 0755 "$work/root/usr/bin/prometheus" "$dest/prometheus"
echo "prometheus installed: $dest/prometheus ($("$dest/prometheus" --version 2>&1 | head -1))"
