-- sqlx-envelope jobs: checkpoints and leases of resumable data jobs (re-encryption,
-- backfill, decryption), and the registry of encrypted columns.
-- One header row (chunk = 0) per job, then one row per primary-key range (chunk).
CREATE TABLE IF NOT EXISTS sqlx_envelope_jobs (
    job         TEXT NOT NULL,
    chunk       INTEGER      NOT NULL,
    kind        TEXT  NOT NULL,
    spec        TEXT         NULL,
    lo          INTEGER      NULL,
    hi          INTEGER      NULL,
    cursor_pk   INTEGER      NULL,
    state       TEXT  NOT NULL,
    owner       TEXT NULL,
    lease_until INTEGER      NULL,
    scanned     INTEGER      NOT NULL DEFAULT 0,
    written     INTEGER      NOT NULL DEFAULT 0,
    conflicts   INTEGER      NOT NULL DEFAULT 0,
    failed      INTEGER      NOT NULL DEFAULT 0,
    updated_ms  INTEGER      NULL,
    PRIMARY KEY (job, chunk)
);

CREATE TABLE IF NOT EXISTS sqlx_envelope_columns (
    table_name  TEXT NOT NULL,
    column_name TEXT NOT NULL,
    pk_column   TEXT NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
