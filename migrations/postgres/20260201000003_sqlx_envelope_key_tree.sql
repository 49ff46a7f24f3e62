-- sqlx-envelope key tree and key lifecycle.
--
-- * kind: 'data' (a data key: encrypts values), 'branch' (a branch key: wraps the
--   data keys of one tenant, or of one scope without tenants; wrapped by a master
--   key), 'index' (a blind-index key; wrapped by a master key).
-- * slot: for keys every process shares (branch and index keys), a unique name
--   (hex SHA-256 of what the key is for), so concurrent processes agree on one key.
-- * parent_id / parent_blob: the branch key that wraps this data key, and the
--   wrapped key. Data keys of earlier releases have neither and are wrapped by
--   master keys in sqlx_envelope_wrapped_keys, like branch and index keys.
-- * owner: the process that reserved a pending key.
-- * *_ms: times by the key store's clock, milliseconds since the Unix epoch.
--   horizon_ms: no process seals under the key after this time (activation +
--   the minting process's max age + outage grace); destroy waits for it.
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'data';
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN slot VARCHAR(64) NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN parent_id BIGINT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN parent_blob BYTEA NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN owner VARCHAR(255) NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN created_ms BIGINT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN state_ms BIGINT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN left_active_ms BIGINT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD COLUMN horizon_ms BIGINT NULL;
ALTER TABLE sqlx_envelope_data_keys ADD CONSTRAINT sqlx_envelope_data_keys_kind
    CHECK (kind IN ('data', 'branch', 'index'));
UPDATE sqlx_envelope_data_keys SET
    created_ms = (extract(epoch from created_at) * 1000)::bigint,
    state_ms = (extract(epoch from COALESCE(destroyed_at, retired_at, created_at)) * 1000)::bigint,
    left_active_ms = (extract(epoch from retired_at) * 1000)::bigint;
CREATE UNIQUE INDEX IF NOT EXISTS sqlx_envelope_data_keys_slot ON sqlx_envelope_data_keys (slot);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_kind
    ON sqlx_envelope_data_keys (kind, tenant, scope, state);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_parent ON sqlx_envelope_data_keys (parent_id);

-- Every column values were sealed into, by scope: written by applications on
-- their first seal into a column (source 'value'), by models ('model', with the
-- model's description), by jobs ('job') and by operators ('operator'). Destroy
-- and verify check every registered column of a key's scope.
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
);
INSERT INTO sqlx_envelope_registry
    (scope, context_table, context_column, sql_table, sql_column, source, registered_ms)
SELECT table_name, table_name, column_name, table_name, column_name, 'job',
       (extract(epoch from now()) * 1000)::bigint
FROM sqlx_envelope_columns
ON CONFLICT DO NOTHING;
DROP TABLE IF EXISTS sqlx_envelope_columns;
