//! Master-key rotation: re-wrap every key a master key wraps under a new one.
//!
//! Master keys wrap branch keys and index keys (and the data keys of release
//! 0.1, which have no branch key); data keys under a branch key are wrapped by
//! it, not by a master key, so a rotation never touches them. For each
//! master-wrapped key of the key store (pending and destroyed ones have nothing
//! to re-wrap): one [`Keyring::rewrap`] call (KMS ReEncrypt, or unwrap and wrap
//! for local keys) turns a blob the keyring can read into a blob under the
//! target master key; the new blob is stored next to the old one; it is
//! unwrapped once to prove it works; only then, if asked, the old blob is
//! deleted. That is two keyring calls per branch (or index) key and no write to
//! any data key or data row.
//! A run that stops halfway is simply run again: keys that already hold a
//! working blob under the target are verified and skipped.

use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::{JobError, JobResult, Progress};
use crate::key::{KeyState, MasterKeyId, WrappedKey};
use crate::keyring::Keyring;
use crate::store::{KeyRecord, KeyStore};

/// What to re-wrap.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RewrapOptions {
    /// The master key to wrap under (one of the keyring's).
    pub target: MasterKeyId,
    /// Only keys wrapped under this master key, re-wrapped from that blob.
    /// Default: every master-wrapped key without a blob under `target`.
    pub from: Option<MasterKeyId>,
    /// Delete the old blob once the new one is verified: the `from` blob, or
    /// (without `from`) every blob under a master key the keyring no longer
    /// wraps new keys with.
    pub delete_old: bool,
    /// Count what would be done, call nothing.
    pub dry_run: bool,
    /// Keys re-wrapped concurrently. Default 4.
    pub concurrency: usize,
    /// Only keys of this scope (e.g. one table). Default: all.
    pub scope: Option<String>,
}

impl RewrapOptions {
    /// Re-wrap under `target`.
    pub fn new(target: MasterKeyId) -> Self {
        RewrapOptions {
            target,
            from: None,
            delete_old: false,
            dry_run: false,
            concurrency: 4,
            scope: None,
        }
    }

    /// Only keys wrapped under `from`.
    pub fn from(mut self, from: MasterKeyId) -> Self {
        self.from = Some(from);
        self
    }

    /// Delete old blobs after verification.
    pub fn delete_old(mut self, yes: bool) -> Self {
        self.delete_old = yes;
        self
    }

    /// Dry run.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// Only keys of `scope`.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

/// What a re-wrap run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Data keys considered (not pending, not destroyed, matching `from`).
    pub keys: u64,
    /// Data keys given a new blob under the target in this run.
    pub rewrapped: u64,
    /// Data keys that already had a working blob under the target.
    pub already: u64,
    /// Old blobs deleted.
    pub deleted: u64,
    /// [`Keyring::rewrap`] calls made.
    pub rewrap_calls: u64,
    /// [`Keyring::unwrap`] calls made to verify new (or existing) blobs.
    pub verify_calls: u64,
    /// Keys skipped because they have no wrapped blob at all (nothing to
    /// re-wrap; such a key cannot be opened by anyone and is reported, not
    /// fatal).
    pub skipped_no_blob: u64,
    /// Keys skipped because an operator destroyed them while this run was
    /// going: the store refused the new blob, so no key material came back.
    pub skipped_destroyed: u64,
}

/// Re-wrap the master-wrapped keys of `store` under `opts.target`. Progress (keys done
/// as `scanned`, re-wrapped as `written`) goes to `progress` if given.
pub async fn rewrap_keys(
    store: &dyn KeyStore,
    keyring: &dyn Keyring,
    opts: &RewrapOptions,
    progress: Option<&watch::Sender<Progress>>,
) -> JobResult<RewrapReport> {
    if !keyring.master_keys().contains(&opts.target) && !keyring.can_unwrap(&opts.target) {
        // A local key named without its `local:` prefix.
        let local = MasterKeyId::new(format!("local:{}", opts.target));
        let guess = if keyring.master_keys().contains(&local) {
            format!(" (did you mean {local}?)")
        } else {
            String::new()
        };
        return Err(JobError::Invalid(format!(
            "master key {}{guess} is not in the keyring this runs with: configure it (SQLX_ENVELOPE_KMS_KEY_IDS, \
             or a key of the local keys file) before re-wrapping under it",
            opts.target
        )));
    }
    if opts.from.as_ref() == Some(&opts.target) {
        return Err(JobError::Invalid(
            "--from and the target are the same master key".into(),
        ));
    }
    let records: Vec<KeyRecord> = store
        .list(&crate::store::KeyFilter::all().master_wrapped())
        .await?
        .into_iter()
        .filter(|r| !matches!(r.state, KeyState::Pending | KeyState::Destroyed))
        .filter(|r| opts.scope.as_ref().is_none_or(|s| &r.scope == s))
        .filter(|r| {
            opts.from
                .as_ref()
                .is_none_or(|f| r.wrapped.iter().any(|w| &w.master_key == f))
        })
        .collect();
    let mut report = RewrapReport {
        keys: records.len() as u64,
        ..Default::default()
    };
    if let Some(p) = progress {
        p.send_modify(|p| p.total = Some(report.keys));
    }
    let (records, empty): (Vec<KeyRecord>, Vec<KeyRecord>) =
        records.into_iter().partition(|r| !r.wrapped.is_empty());
    for r in &empty {
        tracing::warn!(target: "sqlx_envelope::jobs", key_id = r.id.get(), state = %r.state, "key has no wrapped blob; skipped");
    }
    report.skipped_no_blob = empty.len() as u64;
    if opts.dry_run {
        report.rewrapped = records
            .iter()
            .filter(|r| !r.wrapped.iter().any(|w| w.master_key == opts.target))
            .count() as u64;
        return Ok(report);
    }
    let current = keyring.master_keys();
    let mut stream = futures_util::stream::iter(records.iter())
        .map(|r| rewrap_one(store, keyring, opts, &current, r))
        .buffer_unordered(opts.concurrency.max(1));
    while let Some(one) = stream.next().await {
        let one = one?;
        report.rewrapped += one.rewrapped;
        report.already += one.already;
        report.deleted += one.deleted;
        report.rewrap_calls += one.rewrap_calls;
        report.verify_calls += one.verify_calls;
        report.skipped_destroyed += one.skipped_destroyed;
        if let Some(p) = progress {
            p.send_modify(|p| {
                p.scanned += 1;
                p.written += one.rewrapped;
            });
        }
    }
    if let Some(p) = progress {
        p.send_modify(|p| p.finished = true);
    }
    Ok(report)
}

async fn rewrap_one(
    store: &dyn KeyStore,
    keyring: &dyn Keyring,
    opts: &RewrapOptions,
    current: &[MasterKeyId],
    record: &KeyRecord,
) -> JobResult<RewrapReport> {
    let ctx = record.context();
    let mut out = RewrapReport::default();
    let existing = record.wrapped.iter().find(|w| w.master_key == opts.target);
    let mut verified = false;
    if let Some(w) = existing {
        out.verify_calls += 1;
        verified = keyring.unwrap(&ctx, std::slice::from_ref(w)).await.is_ok();
        if verified {
            out.already += 1;
        }
    }
    if !verified {
        let source: &WrappedKey = record
            .wrapped
            .iter()
            .filter(|w| w.master_key != opts.target)
            .find(|w| match &opts.from {
                Some(f) => &w.master_key == f,
                None => keyring.can_unwrap(&w.master_key),
            })
            .ok_or_else(|| {
                let held: Vec<&str> = record
                    .wrapped
                    .iter()
                    .filter(|w| w.master_key != opts.target)
                    .map(|w| w.master_key.as_str())
                    .collect();
                JobError::Invalid(format!(
                    "{} key {} is wrapped under {}, which this keyring cannot unwrap{}: configure \
                     the old master key too (SQLX_ENVELOPE_KMS_UNWRAP_ONLY_KEY_IDS, or keep it in \
                     the local keys file) so the key can be re-wrapped under {}",
                    record.kind.as_str(),
                    record.id,
                    if held.is_empty() {
                        "no other master key".to_owned()
                    } else {
                        held.join(", ")
                    },
                    if existing.is_some() {
                        format!(" (and its blob under {} does not unwrap)", opts.target)
                    } else {
                        String::new()
                    },
                    opts.target
                ))
            })?;
        out.rewrap_calls += 1;
        let new = keyring.rewrap(&ctx, source, &opts.target).await?;
        if new.master_key != opts.target {
            return Err(JobError::Invalid(format!(
                "keyring re-wrapped key {} under {} instead of {}",
                record.id, new.master_key, opts.target
            )));
        }
        // Keep the old blob until the new one is proven to unwrap. The store
        // refuses the write if the key was destroyed since it was listed.
        match store.put_wrapped(record.id, &new).await {
            Ok(()) => {}
            Err(crate::Error::KeyNotUsable {
                state: KeyState::Destroyed,
                ..
            }) => {
                tracing::warn!(target: "sqlx_envelope::jobs", key_id = record.id.get(), "key destroyed during rewrap; skipped");
                out.skipped_destroyed += 1;
                return Ok(out);
            }
            Err(e) => return Err(e.into()),
        }
        out.verify_calls += 1;
        keyring
            .unwrap(&ctx, std::slice::from_ref(&new))
            .await
            .map_err(|e| {
                tracing::error!(target: "sqlx_envelope::jobs", key_id = record.id.get(), error = %e, "new wrapped blob does not unwrap; old blob kept");
                e
            })?;
        out.rewrapped += 1;
    }
    if opts.delete_old {
        for w in &record.wrapped {
            let old = w.master_key != opts.target
                && match &opts.from {
                    Some(f) => &w.master_key == f,
                    None => !current.contains(&w.master_key),
                };
            if old {
                store.delete_wrapped(record.id, &w.master_key).await?;
                out.deleted += 1;
            }
        }
    }
    Ok(out)
}
