#!/usr/bin/env bash
# Scale runs of scenarios the test command runs at small size:
#   - tests/jobs_model_live.rs: the README's Patient model (UUID key, tenant,
#     typed columns) backfilled and rotated on a live database with the
#     re-encryption SIGKILLed twice, plus a composite-key table, on PostgreSQL,
#     MariaDB and SQLite, at SQLX_ENVELOPE_ACCEPT_ROWS rows (default 100,000).
# Prints each scenario's timings (seed, backfill, rotation) on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_mariadb
drop_test_namespaces

export SQLX_ENVELOPE_TEST_PG="${SQLX_ENVELOPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/sqlx_envelope_test}"
export SQLX_ENVELOPE_TEST_MYSQL="${SQLX_ENVELOPE_TEST_MYSQL:-mysql://${MYSQL_TEST_USER}@127.0.0.1:3306/sqlx_envelope_test}"
export SQLX_ENVELOPE_ACCEPT_ROWS="${SQLX_ENVELOPE_ACCEPT_ROWS:-100000}"
export SQLX_OFFLINE=true
export CARGO_INCREMENTAL=0

# The application's own tool the scenario drives (examples/patient_tool.rs).
cargo build --all-features --example patient_tool
cargo test --all-features --test jobs_model_live -- --test-threads 1 --nocapture
