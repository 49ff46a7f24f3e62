#!/usr/bin/env bash
# Runs every example the README promises, as a new user would.
set -euo pipefail
cd "$(dirname "$0")/.."
for ex in quickstart models rotation encrypt_existing_column; do
  echo "--- cargo run --example $ex"
  cargo run --quiet --all-features --example "$ex"
done
