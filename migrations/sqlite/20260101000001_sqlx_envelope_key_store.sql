-- sqlx-envelope key store: one row per data key, one wrapped blob per master key.
-- AUTOINCREMENT: a key id is never reused, even after the highest row is gone.
CREATE TABLE IF NOT EXISTS sqlx_envelope_data_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    scope        TEXT NOT NULL,
    tenant       TEXT NULL,
    state        TEXT NOT NULL CHECK
        (state IN ('pending', 'active', 'decrypt_only', 'retired', 'destroyed')),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    retired_at   TEXT NULL,
    destroyed_at TEXT NULL
);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_scope
    ON sqlx_envelope_data_keys (scope, tenant, state);

CREATE TABLE IF NOT EXISTS sqlx_envelope_wrapped_keys (
    key_id     INTEGER NOT NULL REFERENCES sqlx_envelope_data_keys (id),
    master_key TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (key_id, master_key)
);
