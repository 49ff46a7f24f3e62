//! Many rows at once: sealing a batch in one call, opening a result set with
//! one key lookup per data key, across cores, and as rows stream in.
//!
//! Sealing builds the framed plaintext of every value of every row first, then
//! makes one [`Envelope::seal_many`] call, so a batch reserves its uses of the
//! active data key in one step instead of one per value.
//!
//! Opening resolves the data keys of the whole batch before any value is
//! decrypted ([`Envelope::keys_for`]: each distinct key once); the rest is
//! synchronous CPU work that needs no database, so a large batch is split
//! across cores ([`OFFLOAD_MIN_ROWS`]) while a small one stays on the calling
//! task, where moving it would cost more than it saves (the calling task opens
//! the first part of a split batch itself while that part is small). Within a
//! part, every value is moved out of its row and all are opened together, each in the
//! buffer it was read into, as [`KeySet::open_batch_in_place`] opens a page
//! (consecutive values under one data key share a block-cipher call and the
//! hashed associated data of their columns); each row is then built from its
//! own values. A stream opens rows
//! in chunks as they arrive, so decryption overlaps with fetching.
//!
//! When a data key cannot be resolved, the batch is not lost: each distinct
//! key is then resolved on its own, and only the rows that need a failed key
//! fail. Every error names the row's position in the batch and the column
//! ([`Error::Row`]); [`open_each`] returns one result per row, so one corrupt
//! row does not blank a page.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};

use zeroize::Zeroizing;

use super::__private::FieldOpener;
use super::{Encrypted, SealedRow};
use crate::context::{Context, RowId};
use crate::envelope::{Envelope, KeySet};
use crate::error::{Error, Result};
use crate::key::KeyId;
use crate::sealed::Sealed;

/// Below this many rows a batch is opened on the calling task; at and above
/// it, it is split across cores in balanced parts of at least half this many
/// rows, at most one per core ([`Envelope::batch_threads`]): a first part of
/// fewer than this many rows is opened on the calling task meanwhile, larger
/// parts all on the blocking pool. Chosen so that a part's decryption time
/// clearly exceeds the cost of a hand-off to another thread (tens of
/// microseconds), and the calling task is never held longer than a batch just
/// below this size holds it.
pub const OFFLOAD_MIN_ROWS: usize = 512;

/// The most rows a stream collects before it opens them.
pub const STREAM_CHUNK_ROWS: usize = 1024;

/// Why one row did not open: the column, the row id if it was known, the
/// error. Produced by the generated `SealedRow::__open_with`.
#[doc(hidden)]
#[derive(Debug)]
pub struct OpenFailure {
    /// The column whose value failed (the first encrypted column when the
    /// row id itself is missing).
    pub column: &'static str,
    /// The row id, when it could be built.
    pub row: Option<RowId>,
    /// What went wrong.
    pub error: Error,
}

/// Seal encrypted fields `fields` (indices into `DESCRIPTION.encrypted`) of
/// every model in one [`Envelope::seal_many`] call. The result has
/// `models.len() * fields.len()` entries, row by row; `None` is SQL NULL.
pub async fn seal_fields<M: Encrypted>(
    envelope: &Envelope,
    models: &[M],
    fields: &[usize],
) -> Result<Vec<Option<Sealed>>> {
    let desc = M::DESCRIPTION;
    if fields.is_empty() || models.is_empty() {
        return Ok(Vec::new());
    }
    envelope.register_model(desc).await?;
    let first_column = desc.encrypted[fields[0]].column;
    let mut rows = Vec::with_capacity(models.len());
    let mut tenants = Vec::with_capacity(models.len());
    for m in models {
        rows.push(
            m.row_id()
                .ok_or_else(|| super::missing_row_id(M::TABLE, first_column))?,
        );
        tenants.push(m.tenant());
    }
    let mut plains = Vec::with_capacity(models.len() * fields.len());
    for m in models {
        for &f in fields {
            let plain = m.__encode_field(f)?;
            if plain.as_ref().is_some_and(|p| p.reallocated()) {
                tracing::warn!(
                    target: "sqlx_envelope::model",
                    model = desc.name,
                    column = desc.encrypted[f].column,
                    "a plaintext buffer grew while encoding (the field type's FieldCodec::size_hint is too small): a copy was freed without being zeroized"
                );
            }
            plains.push(plain);
        }
    }
    let mut items = Vec::with_capacity(plains.len());
    for (i, plain) in plains.iter().enumerate() {
        if let Some(plain) = plain {
            let r = i / fields.len();
            let ctx = Context {
                table: M::TABLE,
                column: desc.encrypted[fields[i % fields.len()]].column,
                row: &rows[r],
                tenant: tenants[r].as_deref(),
            };
            items.push((ctx, plain.bytes()));
        }
    }
    let mut sealed = envelope.seal_many(&items).await?.into_iter();
    drop(items);
    Ok(plains
        .iter()
        .map(|p| p.as_ref().and_then(|_| sealed.next()))
        .collect())
}

/// Seal every model of a batch: one [`Envelope::seal_many`] call for all of
/// their values.
pub async fn seal_all<M: Encrypted>(envelope: &Envelope, models: &[M]) -> Result<Vec<M::Sealed>> {
    let fields: Vec<usize> = (0..M::DESCRIPTION.encrypted.len()).collect();
    let mut values = seal_fields(envelope, models, &fields).await?.into_iter();
    let mut rows = models
        .iter()
        .map(|m| m.__assemble(&mut values))
        .collect::<Result<Vec<_>>>()?;
    let mut indexes = index_values(envelope, models).await?.into_iter();
    for row in &mut rows {
        for i in 0..M::INDEXES.len() {
            row.__set_index(i, indexes.next().flatten());
        }
    }
    Ok(rows)
}

/// The blind-index values of every model, row by row (`models.len() *
/// INDEXES.len()` entries; `None` for a NULL field). Each index key is
/// resolved once per batch, through the envelope's cache
/// ([`Envelope::index_key`]).
pub async fn index_values<M: Encrypted>(
    envelope: &Envelope,
    models: &[M],
) -> Result<Vec<Option<crate::index::BlindIndexValue>>> {
    let mut out = Vec::with_capacity(models.len() * M::INDEXES.len());
    if M::INDEXES.is_empty() {
        return Ok(out);
    }
    // One key lookup and HMAC key setup per index and tenant of the batch
    // (a batch holds few tenants: a list beats hashing each row's tenant).
    let mut keyed: Vec<(usize, Option<String>, crate::index::Keyed)> = Vec::new();
    for m in models {
        let tenant = m.tenant();
        for (i, index) in M::INDEXES.iter().enumerate() {
            let at = match keyed
                .iter()
                .position(|(x, t, _)| *x == i && t.as_deref() == tenant.as_deref())
            {
                Some(at) => at,
                None => {
                    let k = index.keyed(envelope, M::TABLE, tenant.as_deref()).await?;
                    keyed.push((i, tenant.clone(), k));
                    keyed.len() - 1
                }
            };
            let k = &keyed[at].2;
            let parts = m.__index_parts(i);
            let parts: Vec<Option<&str>> = parts.iter().map(|p| p.as_deref()).collect();
            out.push(index.value_with(k, &parts));
        }
    }
    Ok(out)
}

/// The data keys of a batch: those that resolved, and the error of each that
/// did not.
#[derive(Clone)]
struct Resolved {
    keys: KeySet,
    failed: Arc<HashMap<KeyId, Arc<Error>>>,
}

/// Resolve the data keys of `rows` at once; a key that cannot be resolved
/// fails only its own rows.
async fn resolve<S: SealedRow>(envelope: &Envelope, rows: &[S]) -> Resolved {
    let mut values: Vec<&Sealed> = Vec::with_capacity(rows.len());
    for row in rows {
        row.for_each_sealed(&mut |_, s| values.push(s));
    }
    match envelope
        .keys_for_partial(values.iter().map(|s| s.as_bytes()))
        .await
    {
        Ok((keys, failed)) => Resolved {
            keys,
            failed: Arc::new(
                failed
                    .into_iter()
                    .map(|(id, e)| (id, Arc::new(e)))
                    .collect(),
            ),
        },
        // Nothing resolved (the key store is unreachable): every row shares
        // the error.
        Err(e) => {
            let e = Arc::new(e);
            Resolved {
                keys: KeySet::default(),
                failed: Arc::new(values.iter().map(|s| (s.key_id(), e.clone())).collect()),
            }
        }
    }
}

/// Open rows synchronously. Positions start at `offset`. With `stop`, the
/// first error ends the batch (it is the last entry; the values of the rows
/// after it were decrypted, and are wiped unread).
///
/// Every value of the rows whose keys resolved is moved out of its row and
/// all of them are opened together ([`KeySet::open_batch_in_place`]'s way:
/// consecutive values under one data key share a block-cipher call and the
/// hashed associated data of their columns), each in the buffer it was read
/// into; then each row is built from its own values, in order, so a value
/// that failed fails its row alone, naming its column.
fn open_rows<S: SealedRow>(
    mut rows: Vec<S>,
    offset: usize,
    resolved: &Resolved,
    stop: bool,
) -> Vec<Result<S::Model>> {
    let desc = <S::Model as Encrypted>::DESCRIPTION;
    let per_row = <S::Model as Encrypted>::ENCRYPTED_COLUMNS.len();
    // Per row: the key that did not resolve, or how many values it gave
    // (`None`: the row has no id, and gave none).
    let mut taken: Vec<std::result::Result<Option<usize>, Unusable>> =
        Vec::with_capacity(rows.len());
    // Per value: its column and which of `owners` (row id, tenant) it is bound to.
    let mut owners: Vec<(RowId, Option<String>)> = Vec::with_capacity(rows.len());
    let mut columns: Vec<&'static str> = Vec::with_capacity(rows.len() * per_row);
    let mut owner_of: Vec<usize> = Vec::with_capacity(rows.len() * per_row);
    let mut bufs: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(rows.len() * per_row);
    for row in &mut rows {
        if let Some(unusable) = unusable_key(row, &resolved.failed) {
            taken.push(Err(unusable));
            continue;
        }
        // A row without its id gives nothing: building it reports the id.
        let Some(id) = row.row_id() else {
            taken.push(Ok(None));
            continue;
        };
        let before = bufs.len();
        let owner = owners.len();
        row.__take_sealed(&mut |column, value| {
            columns.push(column);
            owner_of.push(owner);
            bufs.push(Zeroizing::new(value.into_bytes()));
        });
        owners.push((id, row.tenant()));
        taken.push(Ok(Some(bufs.len() - before)));
    }
    let table = <S::Model as Encrypted>::TABLE;
    let ctxs: Vec<Context<'_>> = columns
        .iter()
        .zip(&owner_of)
        .map(|(&column, &o)| Context {
            table,
            column,
            row: &owners[o].0,
            tenant: owners[o].1.as_deref(),
        })
        .collect();
    let mut opened = resolved.keys.open_batch_parts(&ctxs, bufs).into_iter();
    drop(ctxs);
    // Each row with an id gets back the id and tenant read above: the row
    // does not read them again.
    let mut owners = owners.into_iter();

    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (i, (row, taken)) in rows.into_iter().zip(taken).enumerate() {
        let position = offset + i;
        let result = match taken {
            Err((column, source)) => Err(Error::Row {
                position,
                column,
                key: row.row_id().and_then(|r| desc.key_in_errors(&r)),
                source,
            }),
            Ok(n) => {
                let owner = n.map(|_| owners.next().expect("one owner per row with an id"));
                let n = n.unwrap_or(0);
                let mut values = Opened {
                    values: &mut opened,
                    columns: &columns[at..at + n],
                    next: 0,
                };
                at += n;
                row.__open_with(&mut values, owner).map_err(|f| Error::Row {
                    position,
                    column: f.column,
                    key: f.row.and_then(|r| desc.key_in_errors(&r)),
                    source: Arc::new(f.error),
                })
            }
        };
        let failed = result.is_err();
        out.push(result);
        if stop && failed {
            break;
        }
    }
    out
}

/// The values of one row, opened beforehand by [`open_rows`], handed back in
/// the order the row asks for them (the order it gave them in). Values the
/// row does not ask for (it failed first) are dropped, wiped, with it.
struct Opened<'a> {
    values: &'a mut std::vec::IntoIter<Result<Zeroizing<Vec<u8>>>>,
    columns: &'a [&'static str],
    next: usize,
}

impl FieldOpener for Opened<'_> {
    fn open(&mut self, ctx: &Context<'_>, _taken: Sealed) -> Result<Zeroizing<Vec<u8>>> {
        match self.columns.get(self.next) {
            Some(&column) if crate::format::same_str(column, ctx.column) => {
                self.next += 1;
                self.values.next().unwrap_or_else(|| {
                    Err(Error::Config(format!(
                        "internal error: no opened value for column {column}"
                    )))
                })
            }
            _ => Err(Error::Config(format!(
                "internal error: column {} asked for a value the batch opener did not take",
                ctx.column
            ))),
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        for _ in self.next..self.columns.len() {
            drop(self.values.next());
        }
    }
}

/// A row's first value whose data key did not resolve: its column and why.
type Unusable = (&'static str, Arc<Error>);

/// The first value of `row` whose data key did not resolve, with the reason.
fn unusable_key<S: SealedRow>(row: &S, failed: &HashMap<KeyId, Arc<Error>>) -> Option<Unusable> {
    if failed.is_empty() {
        return None;
    }
    let mut found = None;
    row.for_each_sealed(&mut |column, s| {
        if found.is_none()
            && let Some(e) = failed.get(&s.key_id())
        {
            found = Some((column, e.clone()));
        }
    });
    found
}

/// Open rows on the calling task when they are few, else split across cores
/// in balanced parts: parts on the blocking pool, and the first part on the
/// calling task when it is small ([`OFFLOAD_MIN_ROWS`]); every part is waited
/// for before this returns (also when one failed or panicked); results in
/// order. A panic in a part whose rows are returned is resumed here (with
/// `stop`, the parts after a failed row are not looked at, their panics
/// included).
async fn open_spread<S: SealedRow>(
    envelope: &Envelope,
    mut rows: Vec<S>,
    offset: usize,
    resolved: Resolved,
    stop: bool,
) -> Vec<Result<S::Model>> {
    let n = rows.len();
    if n < OFFLOAD_MIN_ROWS || tokio::runtime::Handle::try_current().is_err() {
        return open_rows(rows, offset, &resolved, stop);
    }
    let parts = (n / (OFFLOAD_MIN_ROWS / 2))
        .min(envelope.batch_threads())
        .max(1);
    // Part i holds rows [bound(i), bound(i + 1)): at least n / parts each.
    let bound = |i: usize| i * n / parts;
    // The first part stays here when it is small enough to open inline.
    let keep = if bound(1) < OFFLOAD_MIN_ROWS {
        bound(1)
    } else {
        0
    };
    let mut tasks = Vec::with_capacity(parts);
    for i in (0..parts).rev() {
        let start = bound(i);
        if start < keep {
            break;
        }
        let part = rows.split_off(start);
        let resolved = resolved.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            open_rows(part, offset + start, &resolved, stop)
        }));
    }
    let first = if rows.is_empty() {
        Ok(Vec::new())
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            open_rows(rows, offset, &resolved, stop)
        }))
    };
    let done = join_all(tasks).await;
    let mut out = first.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    if stop && out.last().is_some_and(Result::is_err) {
        return out;
    }
    // Parts were cut from the end: the last task holds the first of them.
    for task in done.into_iter().rev() {
        match task {
            Ok(opened) => {
                let failed = stop && opened.last().is_some_and(Result::is_err);
                out.extend(opened);
                if failed {
                    break;
                }
            }
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => {
                    out.push(Err(Error::Config(format!(
                        "a decryption task was cancelled: {e}"
                    ))));
                    break;
                }
            },
        }
    }
    out
}

/// Decrypt a whole result set: each distinct data key is resolved once (all
/// of them concurrently, through the envelope's cache), then every value is
/// decrypted locally, across cores for a large batch. Fails on the first row
/// that does not open, with [`Error::Row`] naming its position and column.
pub async fn open_all<S: SealedRow>(envelope: &Envelope, rows: Vec<S>) -> Result<Vec<S::Model>> {
    let resolved = resolve(envelope, &rows).await;
    open_spread(envelope, rows, 0, resolved, true)
        .await
        .into_iter()
        .collect()
}

/// Decrypt a result set row by row: one result per row, in order, so a row
/// that does not open (tampered, copied from another row, under a destroyed
/// key) fails alone with [`Error::Row`] and the others open. Keys are
/// resolved as in [`open_all`].
pub async fn open_each<S: SealedRow>(envelope: &Envelope, rows: Vec<S>) -> Vec<Result<S::Model>> {
    let resolved = resolve(envelope, &rows).await;
    open_spread(envelope, rows, 0, resolved, false).await
}

/// Open sealed rows as they arrive (for example from sqlx's `fetch`): rows
/// that are ready are taken in chunks of up to [`STREAM_CHUNK_ROWS`], their
/// keys resolved, and opened (large chunks off the task) while the next chunk
/// is fetched. One item per row, as [`open_each`]; a database error is an
/// [`Error::Query`] item.
pub fn open_stream<'a, S, St>(envelope: &'a Envelope, rows: St) -> BoxStream<'a, Result<S::Model>>
where
    S: SealedRow,
    St: Stream<Item = std::result::Result<S, sqlx::Error>> + Send + 'a,
{
    let mut next_position = 0;
    rows.ready_chunks(STREAM_CHUNK_ROWS)
        .map(move |chunk| {
            let offset = next_position;
            next_position += chunk.len();
            open_chunk(envelope, chunk, offset)
        })
        .buffered(2)
        .flat_map(stream::iter)
        .boxed()
}

/// Open one chunk of a stream; database errors keep their place.
async fn open_chunk<S: SealedRow>(
    envelope: &Envelope,
    chunk: Vec<std::result::Result<S, sqlx::Error>>,
    offset: usize,
) -> Vec<Result<S::Model>> {
    let model = <S::Model as Encrypted>::DESCRIPTION.name;
    let mut out = Vec::with_capacity(chunk.len());
    let mut run: Vec<S> = Vec::new();
    let mut run_start = offset;
    for (i, item) in chunk.into_iter().enumerate() {
        match item {
            Ok(row) => run.push(row),
            Err(source) => {
                if !run.is_empty() {
                    let rows = std::mem::take(&mut run);
                    let resolved = resolve(envelope, &rows).await;
                    out.extend(open_spread(envelope, rows, run_start, resolved, false).await);
                }
                out.push(Err(Error::Query { model, source }));
                run_start = offset + i + 1;
            }
        }
    }
    if !run.is_empty() {
        let resolved = resolve(envelope, &run).await;
        out.extend(open_spread(envelope, run, run_start, resolved, false).await);
    }
    out
}
