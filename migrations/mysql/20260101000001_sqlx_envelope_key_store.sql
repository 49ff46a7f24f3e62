-- sqlx-envelope key store: one row per data key, one wrapped blob per master key.
CREATE TABLE IF NOT EXISTS sqlx_envelope_data_keys (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    scope        VARCHAR(255) NOT NULL,
    tenant       VARCHAR(255) NULL,
    state        VARCHAR(16)  NOT NULL,
    created_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    retired_at   TIMESTAMP(3) NULL,
    destroyed_at TIMESTAMP(3) NULL,
    INDEX sqlx_envelope_data_keys_scope (scope, tenant, state),
    CONSTRAINT sqlx_envelope_data_keys_state CHECK
        (state IN ('pending', 'active', 'decrypt_only', 'retired', 'destroyed'))
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS sqlx_envelope_wrapped_keys (
    key_id     BIGINT NOT NULL,
    master_key VARCHAR(512) CHARACTER SET ascii NOT NULL,
    wrapped_key VARBINARY(4096) NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (key_id, master_key),
    CONSTRAINT sqlx_envelope_wrapped_keys_key FOREIGN KEY (key_id)
        REFERENCES sqlx_envelope_data_keys (id)
) ENGINE = InnoDB;
