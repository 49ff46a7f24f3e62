//! What a job checks before it registers, plans or writes anything: its
//! options, that every column it reads or writes exists, that a typed codec
//! fits the plaintext column, and that the keys it re-encrypts away from are
//! retired but still decrypt.

use super::db::{Dialect, Ident};
use super::run::{Job, JobKind, PlainKind};
use super::{JobError, JobResult, on_pool};
use crate::key::KeyState;

impl Job {
    pub(super) fn tenant_binding(&self) -> JobResult<&super::TenantBinding> {
        self.target.tenant.as_ref().ok_or_else(|| {
            JobError::Invalid(format!(
                "{} has no tenant column: give the target one (Target::tenant, --tenant-column) to limit a job to one tenant",
                self.target
            ))
        })
    }

    pub(super) async fn precheck(&self) -> JobResult<()> {
        if self.opts.batch_size == 0 || self.opts.concurrency == 0 {
            return Err(JobError::Invalid(
                "batch size and concurrency must be at least 1".into(),
            ));
        }
        if self.opts.tenant.is_some() {
            self.tenant_binding()?;
        }
        self.check_target().await?;
        if let JobKind::Encrypt { plain, kind } | JobKind::Decrypt { plain, kind } = &self.kind {
            self.check_codec(plain, *kind).await?;
        }
        if let JobKind::Reencrypt { from } = &self.kind {
            if from.is_empty() {
                return Err(JobError::Invalid("no key ids to re-encrypt from".into()));
            }
            for id in from {
                let rec = self
                    .envelope
                    .store()
                    .get(*id)
                    .await?
                    .ok_or(crate::Error::UnknownKey(*id))?;
                if rec.state == KeyState::Active {
                    return Err(JobError::Invalid(format!(
                        "data key {id} is active: retire it (mark it decrypt-only) before re-encrypting away from it"
                    )));
                }
                if !rec.state.can_decrypt() {
                    return Err(JobError::Invalid(format!(
                        "data key {id} is {} and cannot decrypt: set it back to decrypt-only first",
                        rec.state
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every column the job reads or writes exists: checked before the job
    /// registers or writes anything, so a typo never leaves a registered
    /// column or a planned job behind.
    async fn check_target(&self) -> JobResult<()> {
        let d = self.pool.dialect();
        let t = &self.target;
        let mut cols: Vec<String> = t.key.iter().map(|k| d.quote(&k.name)).collect();
        if let Some(tb) = &t.tenant {
            cols.push(d.quote(&tb.column));
        }
        cols.extend(self.columns.iter().map(|c| d.quote(&c.column)));
        if let JobKind::Encrypt { plain, .. } | JobKind::Decrypt { plain, .. } = &self.kind {
            cols.push(d.quote(plain));
        }
        if let JobKind::Index { index } = &self.kind {
            cols.push(d.quote(index));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE 1 = 0",
            cols.join(", "),
            d.quote(&t.table)
        );
        let checked: Result<(), sqlx::Error> = on_pool!(&self.pool, p => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_optional(p).await.map(|_| ())
        });
        match checked {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(e)) => Err(JobError::Invalid(format!(
                "{t} cannot be read as the job needs (table {}, columns {}): {}; check the table, --pk, --tenant-column and column names",
                t.table,
                cols.join(", "),
                e.message()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A typed codec reads text forms; PostgreSQL's decrypt-out needs the
    /// column's type to cast into.
    async fn check_codec(&self, plain: &Ident, kind: PlainKind) -> JobResult<()> {
        let codec = &self.target.codec;
        if codec.codec() == Some(crate::model::CodecId::Custom) {
            return Err(JobError::Invalid(format!(
                "{} is a field with its own FieldCodec: jobs re-encrypt it, but backfill and decrypt-out need a built-in type",
                self.target
            )));
        }
        if codec.reads_text_form() && kind == PlainKind::Bytes {
            return Err(JobError::Invalid(format!(
                "{} holds {} values, read through their text form: use PlainKind::Text (no --bytes)",
                self.target,
                codec.codec().map(|c| c.name()).unwrap_or("raw")
            )));
        }
        if codec.reads_text_form()
            && matches!(self.kind, JobKind::Decrypt { .. })
            && self.pool.dialect() == Dialect::Postgres
        {
            let d = self.pool.dialect();
            let sql = "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                       WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped";
            let ty: Option<String> = on_pool!(&self.pool, p => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(d.quote(&self.target.table))
                    .bind(plain.as_str())
                    .fetch_optional(p)
                    .await?
            });
            let ty = ty.ok_or_else(|| {
                JobError::Invalid(format!(
                    "table {} has no column {plain}: create the plaintext column first",
                    self.target.table
                ))
            })?;
            let _ = self.plain_sql_type.set(ty);
        }
        Ok(())
    }
}
