-- sqlx-envelope key tree and key lifecycle (see the PostgreSQL file for the
-- meaning of each column).
ALTER TABLE sqlx_envelope_data_keys
    ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'data',
    ADD COLUMN slot VARCHAR(64) CHARACTER SET ascii NULL,
    ADD COLUMN parent_id BIGINT NULL,
    ADD COLUMN parent_blob VARBINARY(1024) NULL,
    ADD COLUMN owner VARCHAR(255) NULL,
    ADD COLUMN created_ms BIGINT NULL,
    ADD COLUMN state_ms BIGINT NULL,
    ADD COLUMN left_active_ms BIGINT NULL,
    ADD COLUMN horizon_ms BIGINT NULL,
    ADD CONSTRAINT sqlx_envelope_data_keys_kind CHECK (kind IN ('data', 'branch', 'index')),
    ADD UNIQUE INDEX sqlx_envelope_data_keys_slot (slot),
    ADD INDEX sqlx_envelope_data_keys_kind (kind, tenant, scope, state),
    ADD INDEX sqlx_envelope_data_keys_parent (parent_id);
UPDATE sqlx_envelope_data_keys SET
    created_ms = CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED),
    state_ms = CAST(UNIX_TIMESTAMP(COALESCE(destroyed_at, retired_at, created_at)) * 1000 AS SIGNED),
    left_active_ms = CAST(UNIX_TIMESTAMP(retired_at) * 1000 AS SIGNED);

CREATE TABLE IF NOT EXISTS sqlx_envelope_registry (
    scope          VARCHAR(255) NOT NULL,
    context_table  VARCHAR(255) NOT NULL,
    context_column VARCHAR(255) NOT NULL,
    sql_table      VARCHAR(255) NULL,
    sql_column     VARCHAR(255) NULL,
    source         VARCHAR(16)  NOT NULL,
    model          TEXT         NULL,
    registered_ms  BIGINT       NOT NULL,
    PRIMARY KEY (scope, context_table, context_column)
) ENGINE = InnoDB;
INSERT IGNORE INTO sqlx_envelope_registry
    (scope, context_table, context_column, sql_table, sql_column, source, registered_ms)
SELECT table_name, table_name, column_name, table_name, column_name, 'job',
       CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)
FROM sqlx_envelope_columns;
DROP TABLE IF EXISTS sqlx_envelope_columns;
