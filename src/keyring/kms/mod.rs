//! The AWS KMS keyring (feature `aws-kms`).
//!
//! [`KmsKeyring`] wraps data keys under one or more KMS keys of one region. The
//! master key never leaves KMS:
//!
//! - a new data key comes from `GenerateDataKey` (AES_256) under the primary key
//!   and is wrapped under any further keys with `Encrypt`;
//! - a stored data key is unwrapped with `Decrypt`, always with the `KeyId`
//!   pinned, never letting KMS pick the key from the blob;
//! - [`Keyring::rewrap`] uses `ReEncrypt`, so a master-key rotation never sees
//!   plaintext key material outside KMS.
//!
//! Every call carries the coarse encryption context of [`KeyContext::pairs`]
//! (purpose, scope, key id, tenant: never a row id), so KMS (and CloudTrail)
//! see which data key is used for what, and a wrapped blob copied to another
//! key-store row does not decrypt.
//!
//! **Key identifiers** are accepted as users write them: key id, key ARN, alias
//! name (`alias/app`) or alias ARN. Blobs record the key ARN KMS reports
//! (`KeyId` in the GenerateDataKey/Encrypt answer); aliases and key ids are
//! resolved to ARNs with `DescribeKey` when the keyring is built (or on first
//! use with [`KmsKeyringBuilder::resolve_lazily`]), and cached.
//!
//! **Multi-region.** One keyring talks to one region. Wrap each data key under a
//! key in several regions (or a local break-glass key) by combining keyrings in a
//! [`crate::MultiKeyring`], local region first: unwrap tries it first and fails
//! over. Multi-region keys (`mrk-`) are recognised: a blob wrapped under
//! `arn:aws:kms:us-east-1:111:key/mrk-X` is unwrapped by a keyring configured
//! with the replica `arn:aws:kms:eu-west-1:111:key/mrk-X`, which sends its own
//! (local) ARN as `KeyId`. See [`arn`].
//!
//! **Timeouts and retries** are explicit and bounded ([`KmsConfig`]): by default
//! 2 s per attempt, 5 s per operation, 3 attempts with jittered exponential
//! backoff on throttling and transient errors. Errors are typed: unreachable,
//! timed out or KMS-internal is [`Error::KeyringUnavailable`] (retryable);
//! refusals are [`Error::Keyring`] with a [`KeyringErrorKind`] (access denied,
//! invalid ciphertext or context, key disabled or pending deletion, not found,
//! throttled).
//!
//! **Audit.** Every KMS request emits a `tracing` event on target
//! `sqlx_envelope::kms` (INFO when it succeeds, WARN when it fails) with the
//! operation, key ARN, region, encryption context, attempt, latency and outcome;
//! never key material or plaintext. Counters are read with
//! [`KmsKeyring::metrics`].
//!
//! ```no_run
//! # async fn demo() -> sqlx_envelope::Result<()> {
//! use sqlx_envelope::keyring::kms::{KmsConfig, KmsKeyring};
//! use std::time::Duration;
//!
//! // Credentials, region and profile from the standard AWS chain.
//! let keyring = KmsKeyring::builder()
//!     .key("alias/app-data")
//!     .config(KmsConfig::default().operation_timeout(Duration::from_secs(3)))
//!     .build()
//!     .await?;
//! println!("{:?}", keyring.metrics());
//! # Ok(()) }
//! ```

pub mod arn;
mod call;
mod config;
mod metrics;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

pub use call::KmsCallError;
pub use config::KmsConfig;
pub use metrics::{KmsMetrics, KmsOperation};

use self::arn::{KeySpec, configured_may_match, key_arns_match};
use self::call::{Failure, classify};
use self::metrics::Counters;
use super::{GeneratedKey, Keyring};
use crate::error::{Error, KeyringErrorKind, Result};
use crate::key::{KeyContext, KeyMaterial, MasterKeyId, WrappedKey};

/// One configured KMS key: as the user wrote it, and its ARN once known.
struct KmsKey {
    configured: String,
    arn: OnceCell<String>,
}

impl KmsKey {
    fn new(configured: String) -> Self {
        let arn = if KeySpec::of(&configured) == KeySpec::KeyArn {
            OnceCell::new_with(Some(configured.clone()))
        } else {
            OnceCell::new()
        };
        KmsKey { configured, arn }
    }

    /// The ARN if resolved, else the identifier as configured.
    fn id(&self) -> &str {
        self.arn.get().map_or(&self.configured, String::as_str)
    }

    fn may_unwrap(&self, stored: &str) -> bool {
        match self.arn.get() {
            Some(arn) => key_arns_match(arn, stored),
            None => configured_may_match(&self.configured, stored),
        }
    }
}

impl fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

struct Inner {
    client: Client,
    region: String,
    /// Keys that wrap every new data key, primary first.
    keys: Vec<KmsKey>,
    /// Older keys that only unwrap (after a master-key rotation).
    unwrap_only: Vec<KmsKey>,
    config: KmsConfig,
    counters: Counters,
}

/// Data keys wrapped by AWS KMS. See the [module documentation](self).
///
/// Cheap to clone: clones share the client, the resolved key ARNs and the
/// counters.
#[derive(Clone)]
pub struct KmsKeyring {
    inner: Arc<Inner>,
}

impl fmt::Debug for KmsKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsKeyring")
            .field("region", &self.inner.region)
            .field("keys", &self.inner.keys)
            .field("unwrap_only", &self.inner.unwrap_only)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builds a [`KmsKeyring`].
///
/// Without [`client`](Self::client) or [`sdk_config`](Self::sdk_config), the
/// client comes from the standard AWS configuration chain (environment,
/// shared config and credentials files, SSO, web identity, container and
/// instance metadata), honouring `AWS_PROFILE`, `AWS_REGION` and
/// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_KMS`.
#[derive(Debug, Default)]
#[must_use]
pub struct KmsKeyringBuilder {
    client: Option<Client>,
    sdk_config: Option<aws_config::SdkConfig>,
    profile: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    keys: Vec<String>,
    unwrap_only: Vec<String>,
    config: KmsConfig,
    lazy: bool,
}

impl KmsKeyringBuilder {
    /// Use this KMS client. Its retry and timeout settings are replaced by the
    /// keyring's [`KmsConfig`]; everything else (credentials, region, endpoint,
    /// HTTP client, interceptors) is kept.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Build the client from an already loaded AWS configuration.
    pub fn sdk_config(mut self, config: aws_config::SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// Use this named profile of the shared AWS config files.
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.profile = Some(name.into());
        self
    }

    /// Use this region instead of the one from the configuration chain.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Send requests to this endpoint (a VPC endpoint, a FIPS endpoint, or a
    /// local KMS such as moto) instead of the region's public endpoint.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Add a key that wraps every new data key. The first key added is the
    /// primary: it generates data keys and is tried first on unwrap. Key id,
    /// key ARN, alias name or alias ARN.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Add a key that only unwraps (an old master key after rotation, until
    /// every data key was re-wrapped).
    pub fn unwrap_only_key(mut self, key: impl Into<String>) -> Self {
        self.unwrap_only.push(key.into());
        self
    }

    /// Timeouts and retries (see [`KmsConfig`]).
    pub fn config(mut self, config: KmsConfig) -> Self {
        self.config = config;
        self
    }

    /// Do not call DescribeKey while building; resolve aliases and key ids on
    /// first use instead. Lets an application start while KMS is unreachable.
    pub fn resolve_lazily(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Build the keyring. Unless [`resolve_lazily`](Self::resolve_lazily) was
    /// set, aliases and key ids are resolved to key ARNs now (DescribeKey).
    pub async fn build(self) -> Result<KmsKeyring> {
        if self.keys.is_empty() {
            return Err(Error::Config("a KMS keyring needs at least one key".into()));
        }
        if let Some(k) = self
            .keys
            .iter()
            .chain(&self.unwrap_only)
            .find(|k| k.trim().is_empty() || k.trim() != k.as_str())
        {
            return Err(Error::Config(format!("invalid KMS key identifier {k:?}")));
        }
        self.config.validate()?;
        let mut conf = match (self.client, self.sdk_config) {
            (Some(client), _) => client.config().to_builder(),
            (None, Some(sdk)) => aws_sdk_kms::config::Builder::from(&sdk),
            (None, None) => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(p) = &self.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(r) = &self.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                let sdk = loader.load().await;
                aws_sdk_kms::config::Builder::from(&sdk)
            }
        };
        if let Some(r) = self.region {
            conf = conf.region(Region::new(r));
        }
        if let Some(url) = self.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        let c = &self.config;
        conf = conf.retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(c.connect_timeout)
                .operation_attempt_timeout(c.attempt_timeout)
                .operation_timeout(c.operation_timeout)
                .build(),
        );
        let conf = conf.build();
        let region = conf
            .region()
            .map(ToString::to_string)
            .ok_or_else(|| {
                Error::Config(
                    "no AWS region for KMS: set AWS_REGION, a profile with a region, or KmsKeyringBuilder::region".into(),
                )
            })?;
        let keyring = KmsKeyring {
            inner: Arc::new(Inner {
                client: Client::from_conf(conf),
                region,
                keys: self.keys.into_iter().map(KmsKey::new).collect(),
                unwrap_only: self.unwrap_only.into_iter().map(KmsKey::new).collect(),
                config: self.config,
                counters: Counters::default(),
            }),
        };
        if !self.lazy {
            keyring.resolve().await?;
        }
        Ok(keyring)
    }
}

impl KmsKeyring {
    /// Start building a keyring.
    pub fn builder() -> KmsKeyringBuilder {
        KmsKeyringBuilder::default()
    }

    /// A keyring with one key, its client from the standard AWS configuration
    /// chain (credentials, region, profile, `AWS_ENDPOINT_URL`), default
    /// timeouts and retries.
    pub async fn from_env(key: impl Into<String>) -> Result<Self> {
        Self::builder().key(key).build().await
    }

    /// A keyring with one key over an existing client (whose retries and
    /// timeouts are replaced by the defaults of [`KmsConfig`]).
    pub async fn from_client(client: Client, key: impl Into<String>) -> Result<Self> {
        Self::builder().client(client).key(key).build().await
    }

    /// The counters of KMS calls so far.
    pub fn metrics(&self) -> KmsMetrics {
        self.inner.counters.snapshot()
    }

    /// The region this keyring's client talks to.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The KMS client (with the keyring's retry and timeout settings).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The timeouts and retries in force.
    pub fn config(&self) -> &KmsConfig {
        &self.inner.config
    }

    /// The primary key: its ARN once resolved, else as configured.
    pub fn primary(&self) -> MasterKeyId {
        MasterKeyId::new(self.inner.keys[0].id())
    }

    /// Resolve every configured alias and key id to its key ARN (DescribeKey),
    /// once; later calls return at once.
    pub async fn resolve(&self) -> Result<()> {
        for key in self.inner.keys.iter().chain(&self.inner.unwrap_only) {
            self.resolve_key(key).await?;
        }
        Ok(())
    }

    async fn resolve_key<'k>(&self, key: &'k KmsKey) -> Result<&'k str> {
        key.arn
            .get_or_try_init(|| async {
                let out = self
                    .call(KmsOperation::DescribeKey, &key.configured, None, || {
                        self.inner
                            .client
                            .describe_key()
                            .key_id(&key.configured)
                            .send()
                    })
                    .await?;
                out.key_metadata
                    .and_then(|m| m.arn)
                    .ok_or_else(|| Error::Keyring {
                        kind: KeyringErrorKind::Other,
                        master_key: key.configured.clone(),
                        source: Some("DescribeKey returned no key ARN".into()),
                    })
            })
            .await
            .map(String::as_str)
    }

    /// Run one KMS operation with the attempt and operation timeouts, retries
    /// with jittered backoff, counters and the audit event.
    async fn call<T, E, F, Fut>(
        &self,
        op: KmsOperation,
        key: &str,
        ctx: Option<&KeyContext>,
        mut send: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let cfg = &self.inner.config;
        let counters = &self.inner.counters;
        let deadline = Instant::now() + cfg.operation_timeout;
        let context = ctx.map(context_string).unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let budget = cfg
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let started = Instant::now();
            let result = {
                let _in_flight = counters.start(op);
                tokio::time::timeout(budget, send()).await
            };
            let latency = started.elapsed();
            counters.latency(latency);
            let failure = match result {
                Ok(Ok(out)) => {
                    self.audit(op, key, &context, attempt, latency, None);
                    return Ok(out);
                }
                Ok(Err(e)) => classify(&e),
                Err(_elapsed) => Failure::Timeout,
            };
            match failure {
                Failure::Timeout => Counters::bump(&counters.timeouts),
                Failure::Throttled { .. } => Counters::bump(&counters.throttles),
                _ => {}
            }
            self.audit(op, key, &context, attempt, latency, Some(&failure));
            if failure.retryable() && attempt < cfg.max_attempts {
                let delay = cfg.backoff(attempt);
                // Retry only if the next attempt can still start before the deadline.
                if Instant::now() + delay + Duration::from_millis(1) < deadline {
                    Counters::bump(&counters.retries);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            Counters::bump(&counters.failures);
            return Err(failure.into_error(op.as_str(), key, attempt));
        }
    }

    fn audit(
        &self,
        op: KmsOperation,
        key: &str,
        context: &str,
        attempt: u32,
        latency: Duration,
        failure: Option<&Failure>,
    ) {
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let region = self.inner.region.as_str();
        match failure {
            None => tracing::info!(
                target: "sqlx_envelope::kms",
                operation = op.as_str(),
                key_arn = key,
                region,
                encryption_context = context,
                attempt,
                latency_ms,
                outcome = "ok",
                "KMS call"
            ),
            Some(f) => tracing::warn!(
                target: "sqlx_envelope::kms",
                operation = op.as_str(),
                key_arn = key,
                region,
                encryption_context = context,
                attempt,
                latency_ms,
                outcome = f.outcome(),
                retryable = f.retryable(),
                "KMS call failed"
            ),
        }
    }

    /// Wrap `material` under one key with Encrypt.
    async fn encrypt_under(
        &self,
        key: &KmsKey,
        ctx: &KeyContext,
        material: &KeyMaterial,
    ) -> Result<WrappedKey> {
        let key_id = self.resolve_key(key).await?;
        let context = context_map(ctx);
        let out = self
            .call(KmsOperation::Encrypt, key_id, Some(ctx), || {
                self.inner
                    .client
                    .encrypt()
                    .key_id(key_id)
                    .plaintext(Blob::new(material.expose().to_vec()))
                    .set_encryption_context(Some(context.clone()))
                    .send()
            })
            .await?;
        wrapped_from(key_id, out.key_id, out.ciphertext_blob)
    }

    /// The key of this keyring that should decrypt a blob stored under
    /// `stored`, with its ARN: an exact match before a multi-region replica.
    async fn local_key_for(&self, stored: &MasterKeyId) -> Result<Option<String>> {
        for key in self.inner.keys.iter().chain(&self.inner.unwrap_only) {
            if key.may_unwrap(stored.as_str()) {
                let arn = self.resolve_key(key).await?;
                if key_arns_match(arn, stored.as_str()) {
                    return Ok(Some(arn.to_owned()));
                }
            }
        }
        Ok(None)
    }

    async fn decrypt_with(
        &self,
        local_arn: &str,
        ctx: &KeyContext,
        blob: &[u8],
    ) -> Result<KeyMaterial> {
        let context = context_map(ctx);
        let out = self
            .call(KmsOperation::Decrypt, local_arn, Some(ctx), || {
                self.inner
                    .client
                    .decrypt()
                    .key_id(local_arn)
                    .ciphertext_blob(Blob::new(blob.to_vec()))
                    .set_encryption_context(Some(context.clone()))
                    .send()
            })
            .await?;
        material_from(local_arn, out.plaintext)
    }
}

/// The encryption context as KMS takes it.
fn context_map(ctx: &KeyContext) -> HashMap<String, String> {
    ctx.pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// The encryption context as the audit event shows it (`k=v,k=v`, in order).
fn context_string(ctx: &KeyContext) -> String {
    ctx.pairs()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Move a KMS plaintext blob into zeroizing key material at once.
fn material_from(key: &str, plaintext: Option<Blob>) -> Result<KeyMaterial> {
    let bytes = Zeroizing::new(plaintext.map(Blob::into_inner).unwrap_or_default());
    KeyMaterial::from_slice(&bytes).map_err(|_| Error::Keyring {
        kind: KeyringErrorKind::Other,
        master_key: key.to_owned(),
        source: Some(format!("KMS returned a {}-byte data key, expected 32", bytes.len()).into()),
    })
}

fn wrapped_from(key: &str, key_id: Option<String>, blob: Option<Blob>) -> Result<WrappedKey> {
    let blob = blob
        .map(Blob::into_inner)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::Keyring {
            kind: KeyringErrorKind::Other,
            master_key: key.to_owned(),
            source: Some("KMS returned no ciphertext blob".into()),
        })?;
    Ok(WrappedKey {
        master_key: MasterKeyId::new(key_id.unwrap_or_else(|| key.to_owned())),
        blob,
    })
}

#[async_trait]
impl Keyring for KmsKeyring {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        self.inner
            .keys
            .iter()
            .map(|k| MasterKeyId::new(k.id()))
            .collect()
    }

    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool {
        self.inner
            .keys
            .iter()
            .chain(&self.inner.unwrap_only)
            .any(|k| k.may_unwrap(master_key.as_str()))
    }

    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey> {
        let primary = &self.inner.keys[0];
        let key_id = self.resolve_key(primary).await?;
        let context = context_map(ctx);
        let mut out = self
            .call(KmsOperation::GenerateDataKey, key_id, Some(ctx), || {
                self.inner
                    .client
                    .generate_data_key()
                    .key_id(key_id)
                    .key_spec(DataKeySpec::Aes256)
                    .set_encryption_context(Some(context.clone()))
                    .send()
            })
            .await?;
        let material = material_from(key_id, out.plaintext.take())?;
        let mut wrapped = vec![wrapped_from(key_id, out.key_id, out.ciphertext_blob)?];
        for key in &self.inner.keys[1..] {
            wrapped.push(self.encrypt_under(key, ctx, &material).await?);
        }
        Ok(GeneratedKey { material, wrapped })
    }

    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>> {
        let mut out = Vec::with_capacity(self.inner.keys.len());
        for key in &self.inner.keys {
            out.push(self.encrypt_under(key, ctx, material).await?);
        }
        Ok(out)
    }

    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial> {
        // Candidates in order of preference: per configured key (primary first),
        // blobs under exactly that key, then blobs under a replica of it.
        let mut candidates: Vec<(String, &WrappedKey)> = Vec::new();
        for key in self.inner.keys.iter().chain(&self.inner.unwrap_only) {
            if !wrapped
                .iter()
                .any(|w| key.may_unwrap(w.master_key.as_str()))
            {
                continue;
            }
            let arn = self.resolve_key(key).await?;
            let exact = wrapped.iter().filter(|w| w.master_key.as_str() == arn);
            let replica = wrapped.iter().filter(|w| {
                w.master_key.as_str() != arn && key_arns_match(arn, w.master_key.as_str())
            });
            for w in exact.chain(replica) {
                if !candidates.iter().any(|(_, c)| std::ptr::eq(*c, w)) {
                    candidates.push((arn.to_owned(), w));
                }
            }
        }
        let mut first_error = None;
        for (i, (arn, w)) in candidates.iter().enumerate() {
            match self.decrypt_with(arn, ctx, &w.blob).await {
                Ok(material) => {
                    if i > 0 {
                        Counters::bump(&self.inner.counters.failovers);
                    }
                    return Ok(material);
                }
                // The same endpoint will not answer for the next blob either.
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::no_usable_wrapped_key(self.inner.keys[0].id())))
    }

    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        let mut destination = None;
        for key in &self.inner.keys {
            if key.id() == target.as_str() || key.configured == target.as_str() {
                destination = Some(self.resolve_key(key).await?);
                break;
            }
            let arn = self.resolve_key(key).await?;
            if key_arns_match(arn, target.as_str()) {
                destination = Some(arn);
                break;
            }
        }
        let destination = destination.ok_or_else(|| {
            Error::Config(format!("master key {target} is not part of this keyring"))
        })?;
        // Send the local replica for a multi-region source key; any other
        // source as stored (KMS checks the caller may decrypt with it).
        let source = self
            .local_key_for(&wrapped.master_key)
            .await?
            .unwrap_or_else(|| wrapped.master_key.as_str().to_owned());
        let context = context_map(ctx);
        let out = self
            .call(KmsOperation::ReEncrypt, destination, Some(ctx), || {
                self.inner
                    .client
                    .re_encrypt()
                    .ciphertext_blob(Blob::new(wrapped.blob.clone()))
                    .source_key_id(&source)
                    .set_source_encryption_context(Some(context.clone()))
                    .destination_key_id(destination)
                    .set_destination_encryption_context(Some(context.clone()))
                    .send()
            })
            .await?;
        wrapped_from(destination, out.key_id, out.ciphertext_blob)
    }
}
