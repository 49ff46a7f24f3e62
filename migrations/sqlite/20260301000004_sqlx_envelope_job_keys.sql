-- sqlx-envelope jobs over any primary key (see the PostgreSQL file).
ALTER TABLE sqlx_envelope_jobs ADD COLUMN lo_key TEXT NULL;
ALTER TABLE sqlx_envelope_jobs ADD COLUMN hi_key TEXT NULL;
ALTER TABLE sqlx_envelope_jobs ADD COLUMN cursor_key TEXT NULL;
UPDATE sqlx_envelope_jobs SET
    lo_key = CASE WHEN lo IS NULL THEN NULL ELSE '00010100000008' || printf('%016x', lo) END,
    hi_key = CASE WHEN hi IS NULL THEN NULL ELSE '00010100000008' || printf('%016x', hi) END,
    cursor_key = CASE WHEN cursor_pk IS NULL THEN NULL ELSE '00010100000008' || printf('%016x', cursor_pk) END;
ALTER TABLE sqlx_envelope_jobs DROP COLUMN lo;
ALTER TABLE sqlx_envelope_jobs DROP COLUMN hi;
ALTER TABLE sqlx_envelope_jobs DROP COLUMN cursor_pk;
