#!/usr/bin/env bash
# End-to-end benchmark (release build): plaintext vs envelope vs pgcrypto on the
# local databases. Writes target/bench/report.json and prints a table.
#   BENCH_ROWS=100000 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_mariadb
ensure_moto
export SQLX_ENVELOPE_TEST_PG="${SQLX_ENVELOPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/sqlx_envelope_test}"
export SQLX_ENVELOPE_TEST_MYSQL="${SQLX_ENVELOPE_TEST_MYSQL:-mysql://${MYSQL_TEST_USER}@127.0.0.1:3306/sqlx_envelope_test}"
cargo bench --all-features --bench e2e
# Blind indexes: seal with an index against seal alone, and a lookup among
# 1,000,000 rows against an indexed plaintext column (BENCH_LOOKUP_ROWS).
cargo bench --all-features --bench lookup
