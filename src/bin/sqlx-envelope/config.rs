//! Global flags: database, keyring, progress display.

use std::sync::Arc;

use clap::Args;
use sqlx_envelope::jobs::{JobPool, Target};
use sqlx_envelope::keyring::KmsKeyring;
use sqlx_envelope::{Envelope, Keyring, LocalKeyring, MultiKeyring};

use crate::Failure;

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// Database URL: postgres://..., mysql://... (or mariadb://...), sqlite:path.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// JSON file of local master keys (see the keyring docs for the format).
    #[arg(long, env = "SQLX_ENVELOPE_LOCAL_KEYS_FILE", global = true)]
    pub local_keys_file: Option<std::path::PathBuf>,

    /// AWS KMS keys (key id, ARN or alias), comma-separated; the first wraps new data keys.
    #[arg(
        long = "kms-key-id",
        env = "SQLX_ENVELOPE_KMS_KEY_IDS",
        value_delimiter = ',',
        global = true
    )]
    pub kms_key_ids: Vec<String>,

    /// AWS KMS keys used only to unwrap (for example the old key during a rotation).
    #[arg(
        long = "kms-unwrap-only-key-id",
        env = "SQLX_ENVELOPE_KMS_UNWRAP_ONLY_KEY_IDS",
        value_delimiter = ',',
        global = true
    )]
    pub kms_unwrap_only: Vec<String>,

    /// KMS endpoint URL override (a local KMS such as moto).
    #[arg(long, env = "SQLX_ENVELOPE_KMS_ENDPOINT", global = true)]
    pub kms_endpoint: Option<String>,

    /// AWS region of the KMS keys (default: the AWS configuration chain).
    #[arg(long, env = "SQLX_ENVELOPE_KMS_REGION", global = true)]
    pub kms_region: Option<String>,

    /// JSON file mapping tenants to their own master keys (bring your own key):
    /// `{"acme": {"kms_key_ids": ["arn:..."], "kms_region": "eu-west-1"},
    /// "globex": {"local_keys_file": "globex.json"}}`.
    #[arg(long, env = "SQLX_ENVELOPE_TENANT_KEYS", global = true)]
    pub tenant_keys: Option<std::path::PathBuf>,

    /// Database connections to open at most.
    #[arg(long, default_value_t = 8, global = true)]
    pub max_connections: u32,

    /// Do not draw progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl Global {
    /// Connect to the database.
    pub async fn pool(&self) -> Result<JobPool, Failure> {
        let url = self.database_url.as_deref().ok_or_else(|| {
            Failure::Error("no database: set DATABASE_URL or pass --database-url".into())
        })?;
        Ok(JobPool::connect(url, self.max_connections).await?)
    }

    /// The keyring from the local key file and/or KMS keys (KMS first).
    pub async fn keyring(&self) -> Result<Arc<dyn Keyring>, Failure> {
        let mut members: Vec<Arc<dyn Keyring>> = Vec::new();
        if !self.kms_key_ids.is_empty() || !self.kms_unwrap_only.is_empty() {
            if self.kms_key_ids.is_empty() {
                return Err(Failure::Error(
                    "KMS unwrap-only keys need at least one --kms-key-id".into(),
                ));
            }
            let mut b = KmsKeyring::builder();
            for k in &self.kms_key_ids {
                b = b.key(k.trim());
            }
            for k in &self.kms_unwrap_only {
                b = b.unwrap_only_key(k.trim());
            }
            if let Some(e) = &self.kms_endpoint {
                b = b.endpoint_url(e);
            }
            if let Some(r) = &self.kms_region {
                b = b.region(r);
            }
            members.push(Arc::new(b.build().await?));
        }
        if let Some(path) = &self.local_keys_file {
            members.push(Arc::new(LocalKeyring::from_file(path)?));
        }
        match members.len() {
            0 => Err(Failure::Error(
                "no master key: set SQLX_ENVELOPE_LOCAL_KEYS_FILE and/or SQLX_ENVELOPE_KMS_KEY_IDS"
                    .into(),
            )),
            1 => Ok(members.pop().expect("one member")),
            _ => Ok(Arc::new(MultiKeyring::new(members)?)),
        }
    }

    /// Pool, and an envelope over its key store, the keyring and the tenant
    /// keyrings of `--tenant-keys`.
    pub async fn envelope(&self) -> Result<(JobPool, Envelope), Failure> {
        let pool = self.pool().await?;
        let keyring = self.keyring().await?;
        let mut builder = Envelope::builder()
            .keyring_arc(keyring)
            .store_arc(pool.key_store());
        if let Some(path) = &self.tenant_keys {
            for (tenant, keyring) in tenant_keyrings(path, self).await? {
                builder = builder.tenant_keyring_arc(tenant, keyring);
            }
        }
        Ok((pool, builder.build()?))
    }
}

/// One tenant's master keys in the `--tenant-keys` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKeys {
    #[serde(default)]
    kms_key_ids: Vec<String>,
    #[serde(default)]
    kms_unwrap_only_key_ids: Vec<String>,
    kms_region: Option<String>,
    kms_endpoint: Option<String>,
    local_keys_file: Option<std::path::PathBuf>,
}

async fn tenant_keyrings(
    path: &std::path::Path,
    g: &Global,
) -> Result<Vec<(String, Arc<dyn Keyring>)>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Error(format!(
            "cannot read tenant keys file {}: {e}",
            path.display()
        ))
    })?;
    let map: std::collections::BTreeMap<String, TenantKeys> = serde_json::from_str(&text)
        .map_err(|e| {
            Failure::Error(format!(
                "tenant keys file {} is not a JSON object of tenant -> {{kms_key_ids, kms_unwrap_only_key_ids, kms_region, kms_endpoint, local_keys_file}}: {e}",
                path.display()
            ))
        })?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut out = Vec::new();
    for (tenant, t) in map {
        let mut members: Vec<Arc<dyn Keyring>> = Vec::new();
        if !t.kms_key_ids.is_empty() {
            let mut b = KmsKeyring::builder();
            for k in &t.kms_key_ids {
                b = b.key(k.trim());
            }
            for k in &t.kms_unwrap_only_key_ids {
                b = b.unwrap_only_key(k.trim());
            }
            if let Some(e) = t.kms_endpoint.as_ref().or(g.kms_endpoint.as_ref()) {
                b = b.endpoint_url(e);
            }
            if let Some(r) = t.kms_region.as_ref().or(g.kms_region.as_ref()) {
                b = b.region(r);
            }
            members.push(Arc::new(b.build().await?));
        }
        if let Some(f) = &t.local_keys_file {
            members.push(Arc::new(LocalKeyring::from_file(base.join(f))?));
        }
        let keyring: Arc<dyn Keyring> = match members.len() {
            0 => {
                return Err(Failure::Error(format!(
                    "tenant {tenant:?} in {} names no master key: give kms_key_ids or local_keys_file",
                    path.display()
                )));
            }
            1 => members.pop().expect("one member"),
            _ => Arc::new(MultiKeyring::new(members)?),
        };
        out.push((tenant, keyring));
    }
    Ok(out)
}

/// Parse `table.column[:pk]` (pk as for `--pk`, e.g. `id:uuid` or
/// `tenant_id:int,id:uuid`; default `id`).
pub fn parse_column(spec: &str) -> Result<Target, String> {
    let (tc, pk) = spec.split_once(':').unwrap_or((spec, "id"));
    let (t, c) = tc
        .split_once('.')
        .ok_or_else(|| format!("{spec:?}: expected TABLE.COLUMN or TABLE.COLUMN:PK"))?;
    let key = sqlx_envelope::jobs::parse_pk_spec(pk).map_err(|e| e.to_string())?;
    Target::keyed(t, key, c).map_err(|e| e.to_string())
}
