-- sqlx-envelope jobs over any primary key: chunk bounds and cursors are stored
-- as the canonical form of the row's key (hex of the bytes bound into each
-- value's associated data: part count, then per part a type tag and the
-- length-prefixed value), so integer, UUID, text, binary and composite keys
-- are checkpointed alike. Existing integer bounds are converted.
ALTER TABLE sqlx_envelope_jobs ADD COLUMN lo_key TEXT NULL;
ALTER TABLE sqlx_envelope_jobs ADD COLUMN hi_key TEXT NULL;
ALTER TABLE sqlx_envelope_jobs ADD COLUMN cursor_key TEXT NULL;
UPDATE sqlx_envelope_jobs SET
    lo_key = '00010100000008' || lpad(to_hex(lo), 16, '0'),
    hi_key = '00010100000008' || lpad(to_hex(hi), 16, '0'),
    cursor_key = '00010100000008' || lpad(to_hex(cursor_pk), 16, '0');
ALTER TABLE sqlx_envelope_jobs DROP COLUMN lo;
ALTER TABLE sqlx_envelope_jobs DROP COLUMN hi;
ALTER TABLE sqlx_envelope_jobs DROP COLUMN cursor_pk;
