#!/usr/bin/env bash
# Installs promtool (Debian's prometheus package ships it) when it is not on PATH, for
# `make check-alerts`. Needs root or sudo; the package's own Prometheus server is not started.
set -euo pipefail
if command -v promtool >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "promtool is not installed and apt-get is not available: install Prometheus's promtool" >&2
  exit 1
fi
as_root=()
if [ "$(id -u)" != 0 ]; then as_root=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# policy-rc.d 101: the package must not start a Prometheus server (where an init system runs).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod +x "$policy"
  trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi
"${as_root[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null
