#!/usr/bin/env bash
# Build the int4 GEMV prototype in a temp dir and run it: bash bench/int4_gemv_cpu/run.sh [repeats]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! grep -q avx512_vnni /proc/cpuinfo; then
  echo "error: this prototype needs AVX-512 VNNI (avx512_vnni in /proc/cpuinfo)" >&2
  exit 2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
g++ -O3 -march=native -fopenmp -o "$tmp/int4_gemv" "$here/int4_gemv.cpp"
"$tmp/int4_gemv" "${1:-20}"
