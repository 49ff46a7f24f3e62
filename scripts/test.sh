#!/usr/bin/env bash
# The test command: brings up everything the suite needs, then runs all of it.
#   - PostgreSQL and MariaDB on 127.0.0.1 (started if stopped; test databases created)
#   - moto (a local KMS endpoint) in a virtualenv under target/
# A missing service is a failure, never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_mariadb
ensure_moto
drop_test_namespaces

export SQLX_ENVELOPE_TEST_PG="${SQLX_ENVELOPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/sqlx_envelope_test}"
export SQLX_ENVELOPE_TEST_MYSQL="${SQLX_ENVELOPE_TEST_MYSQL:-mysql://${MYSQL_TEST_USER}@127.0.0.1:3306/sqlx_envelope_test}"
export SQLX_OFFLINE=true
# No incremental state: the suite builds ~30 test binaries once; incremental
# caches would only double the target directory.
export CARGO_INCREMENTAL=0

# Each step prints the time elapsed since the start (the README records them).
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo clippy (default features: library, CLI-less build, examples, -D warnings)"
cargo clippy -p sqlx-envelope --lib --examples -- -D warnings

step "cargo test (all features, PostgreSQL + MariaDB + SQLite + local KMS)"
cargo test --workspace --all-features --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"

step "documented commands (README.md and docs/, run as written)"
python3 scripts/doc_commands.py

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet
echo "all suites passed in $((SECONDS / 60))m$((SECONDS % 60))s"
