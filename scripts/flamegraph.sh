#!/usr/bin/env bash
# Draws a flame graph (SVG) from a perf.data recorded by examples/loadgen.rs
# (LOADGEN_PROFILE=<dir>). Usage: scripts/flamegraph.sh <dir>/perf.data out.svg [title]
# Needs perf and inferno (`cargo install inferno`).
set -euo pipefail
data=${1:?perf.data}; out=${2:?out.svg}; title=${3:-sigild under TOTP approvals, 8 clients}
command -v inferno-collapse-perf >/dev/null || cargo install inferno --locked
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$title" --width 1600 --minwidth 0.5 > "$out"
echo "wrote $out"
