#!/usr/bin/env bash
# Tools the benchmarks compare skyassets with: curl (one stream) and aria2c (several connections),
# openssl (the SHA-256 of a verified curl download), and GNU time for each client's peak memory.
#
#   scripts/bench-deps.sh        # installs the Debian packages that are missing (root only)
set -euo pipefail

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v aria2c >/dev/null || missing+=(aria2)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/time ] || missing+=(time)  # peak memory of each client
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench-deps.sh: ${missing[*]} missing, and installing them needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "bench-deps.sh: installing ${missing[*]} with apt-get" >&2
apt-get install -y -q "${missing[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
