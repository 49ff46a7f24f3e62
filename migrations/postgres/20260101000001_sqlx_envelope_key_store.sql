-- sqlx-envelope key store: one row per data key, one wrapped blob per master key.
CREATE TABLE IF NOT EXISTS sqlx_envelope_data_keys (
    id           BIGSERIAL PRIMARY KEY,
    scope        VARCHAR(255) NOT NULL,
    tenant       VARCHAR(255) NULL,
    state        VARCHAR(16)  NOT NULL,
    created_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
    retired_at   TIMESTAMPTZ  NULL,
    destroyed_at TIMESTAMPTZ  NULL,
    CONSTRAINT sqlx_envelope_data_keys_state CHECK
        (state IN ('pending', 'active', 'decrypt_only', 'retired', 'destroyed'))
);
CREATE INDEX IF NOT EXISTS sqlx_envelope_data_keys_scope
    ON sqlx_envelope_data_keys (scope, tenant, state);

CREATE TABLE IF NOT EXISTS sqlx_envelope_wrapped_keys (
    key_id     BIGINT       NOT NULL REFERENCES sqlx_envelope_data_keys (id),
    master_key VARCHAR(512) NOT NULL,
    wrapped_key BYTEA        NOT NULL,
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, master_key)
);
