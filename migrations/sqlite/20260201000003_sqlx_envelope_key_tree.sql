-- sqlx-envelope key tree and key lifecycle (see the PostgreSQL file for the
-- meaning of each column).
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'data'
    CHECK (kind IN ('data', 'branch', 'index'));
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN slot TEXT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN parent_id INTEGER NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN parent_blob BLOB NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN owner TEXT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN created_ms INTEGER NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN state_ms INTEGER NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN left_active_ms INTEGER NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN horizon_ms INTEGER NULL;
UPDATE sqlx_envelope_data_keys SET
    created_ms = CAST((julianday(created_at) - 2440587.5) * 86400000 AS INTEGER),
    state_ms = CAST((julianday(COALESCE(destroyed_at, retired_at, created_at)) - 2440587.5) * 86400000 AS INTEGER),
    left_active_ms = CAST((julianday(retired_at) - 2440587.5) * 86400000 AS INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS sqlx_envelope_data_keys_slot ON sqlx_envelope_data_keys (slot);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_kind
    ON sqlx_envelope_data_keys (kind, tenant, scope, state);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_parent ON sqlx_envelope_data_keys (parent_id);

CREATE TABLE IF NOT EXISTS sqlx_envelope_registry (
    scope          TEXT    NOT NULL,
    context_table  TEXT    NOT NULL,
    context_column TEXT    NOT NULL,
    sql_table      TEXT    NULL,
    sql_column     TEXT    NULL,
    source         TEXT    NOT NULL,
    model          TEXT    NULL,
    registered_ms  INTEGER NOT NULL,
    PRIMARY KEY (scope, context_table, context_column)
);
INSERT OR IGNORE INTO sqlx_envelope_registry
    (scope, context_table, context_column, sql_table, sql_column, source, registered_ms)
SELECT table_name, table_name, column_name, table_name, column_name, 'job',
       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
FROM sqlx_envelope_columns;
DROP TABLE IF EXISTS sqlx_envelope_columns;
