#!/usr/bin/env bash
# The whole test suite: unit, integration, golden-vector, Wycheproof, CLI and doc tests, with
# every feature. Emulators the tests need are started here (none yet for the core).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-features --locked "$@"
