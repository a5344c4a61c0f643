#!/usr/bin/env bash
# cutover benchmark: zero downtime, speed and failure handling under real load (wrk through a private nginx),
# against the published blue/green pattern in examples/bench/baseline/published/ (and a kill-at-once script).
# Everything runs on 127.0.0.1 under a temp dir; nothing touches a system nginx. Results:
# examples/bench/results/latest.md and latest.json (and the tables on stdout).
#
#   bash examples/bench/run.sh [--skip-canary] [--deploys 10] [--wait-load 1.5] ...   (see bench.py --help)
#   BASELINE_SLEEP=1 shortens the published pattern's sleeps (10 s -> 1 s) for a quick run; the output says so.
#   KEEP=1 keeps the temp dir (nginx logs, app logs, wrk output).
#
# Installs wrk, nginx, python3, curl and lsof with apt-get when missing (sudo only when not root), builds
# `cargo build --release --locked`, then runs examples/bench/bench.py with target/release/cutover.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash .ci/install-missing wrk nginx python3 curl lsof
export PATH="$PATH:/usr/sbin"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again" >&2
    exit 1
fi
build_start=$SECONDS
cargo build --release --locked
build_secs=$((SECONDS - build_start))

exec python3 examples/bench/bench.py --cutover target/release/cutover --build-secs "$build_secs" "$@"
