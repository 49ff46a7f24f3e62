-- sqlx-envelope jobs: checkpoints and leases of resumable data jobs (re-encryption,
-- backfill, decryption), and the registry of encrypted columns.
-- One header row (chunk = 0) per job, then one row per primary-key range (chunk).
CREATE TABLE IF NOT EXISTS sqlx_envelope_jobs (
    job         VARCHAR(255) NOT NULL,
    chunk       BIGINT       NOT NULL,
    kind        VARCHAR(32)  NOT NULL,
    spec        TEXT         NULL,
    lo          BIGINT       NULL,
    hi          BIGINT       NULL,
    cursor_pk   BIGINT       NULL,
    state       VARCHAR(16)  NOT NULL,
    owner       VARCHAR(255) NULL,
    lease_until BIGINT       NULL,
    scanned     BIGINT       NOT NULL DEFAULT 0,
    written     BIGINT       NOT NULL DEFAULT 0,
    conflicts   BIGINT       NOT NULL DEFAULT 0,
    failed      BIGINT       NOT NULL DEFAULT 0,
    updated_ms  BIGINT       NULL,
    PRIMARY KEY (job, chunk)
);

CREATE TABLE IF NOT EXISTS sqlx_envelope_columns (
    table_name  VARCHAR(255) NOT NULL,
    column_name VARCHAR(255) NOT NULL,
    pk_column   VARCHAR(255) NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
