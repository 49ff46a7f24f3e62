-- sqlx-envelope jobs over any primary key (see the PostgreSQL file).
ALTER TABLE sqlx_envelope_jobs
    ADD COLUMN lo_key TEXT NULL,
    ADD COLUMN hi_key TEXT NULL,
    ADD COLUMN cursor_key TEXT NULL;
UPDATE sqlx_envelope_jobs SET
    lo_key = CONCAT('00010100000008', LPAD(LOWER(HEX(lo)), 16, '0')),
    hi_key = CONCAT('00010100000008', LPAD(LOWER(HEX(hi)), 16, '0')),
    cursor_key = CONCAT('00010100000008', LPAD(LOWER(HEX(cursor_pk)), 16, '0'));
ALTER TABLE sqlx_envelope_jobs DROP COLUMN lo, DROP COLUMN hi, DROP COLUMN cursor_pk;
