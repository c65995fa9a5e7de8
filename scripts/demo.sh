#!/usr/bin/env bash
# The demo on a fresh machine: installs Prosody if missing, builds jatproxy
# and the examples, then runs a real Prosody on loopback with jatproxy as
# its component, two implementing clients and a requester, printing the
# translated flow.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin jatproxy --examples
exec target/release/examples/demo
