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

export SQLX_ENVELOPE_TEST_PG="${SQLX_ENVELOPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/sqlx_envelope_test}"
export SQLX_ENVELOPE_TEST_MYSQL="${SQLX_ENVELOPE_TEST_MYSQL:-mysql://${MYSQL_TEST_USER}@127.0.0.1:3306/sqlx_envelope_test}"
export SQLX_OFFLINE=true

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (all features, PostgreSQL + MariaDB + SQLite + local KMS)"
cargo test --workspace --all-features --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"

step "examples"
scripts/examples.sh

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet
echo "all suites passed"
