-- sqlx-envelope jobs: the number of passes a job has made over its table after
-- the first (kept on the job's header row, chunk = 0). Starting a new pass is a
-- compare-and-set on it, so that workers started together on a finished job
-- make one new pass between them.
ALTER TABLE sqlx_envelope_jobs ADD COLUMN passes BIGINT NOT NULL DEFAULT 0;
