//! Global flags: database, keyring, progress display.

use std::sync::Arc;

use crate::jobs::{JobPool, Target};
use crate::keyring::KmsKeyring;
use crate::{Envelope, Keyring, LocalKeyring, MultiKeyring};
use clap::Args;

use super::Failure;

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// Database URL: postgres://..., mysql://... (or mariadb://...), sqlite:path (sqlite:path?mode=rwc
    /// creates the file if it does not exist).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// JSON file of local master keys (see the keyring docs for the format).
    #[arg(long, env = "SQLX_ENVELOPE_LOCAL_KEYS_FILE", global = true)]
    pub local_keys_file: Option<std::path::PathBuf>,

    /// AWS KMS keys (key id, ARN or alias), comma-separated; the first generates new keys, every
    /// key wraps them. A key ARN is used in its own region (several regions: one KMS client per
    /// region, failing over in this order); key ids and aliases in --kms-region.
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

    /// KMS endpoint URL override (a local KMS such as moto): URL for every region, or
    /// REGION=URL for one region (comma-separated or repeated).
    #[arg(
        long = "kms-endpoint",
        env = "SQLX_ENVELOPE_KMS_ENDPOINT",
        value_delimiter = ',',
        global = true
    )]
    pub kms_endpoints: Vec<String>,

    /// AWS region of the KMS keys (default: the AWS configuration chain).
    #[arg(long, env = "SQLX_ENVELOPE_KMS_REGION", global = true)]
    pub kms_region: Option<String>,

    /// JSON file mapping tenants to their own master keys (bring your own key):
    /// `{"acme": {"kms_key_ids": ["arn:..."], "kms_region": "eu-west-1"},
    /// "globex": {"local_keys_file": "globex.json"}}`.
    #[arg(long, env = "SQLX_ENVELOPE_TENANT_KEYS", global = true)]
    pub tenant_keys: Option<std::path::PathBuf>,

    /// Database connections to open at most (at least 1).
    #[arg(long, default_value_t = 8, global = true, value_parser = clap::value_parser!(u32).range(1..))]
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
            members.extend(
                kms_keyrings(
                    &self.kms_key_ids,
                    &self.kms_unwrap_only,
                    self.kms_region.as_deref(),
                    &self.kms_endpoints,
                )
                .await?,
            );
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

/// One KMS keyring per region, in the order the regions first appear among
/// `keys` (so the first key's region generates): a key ARN belongs to its own
/// region, a key id or alias to `region` (or the AWS configuration chain's).
/// Endpoints are `URL` (every region) or `REGION=URL`.
async fn kms_keyrings(
    keys: &[String],
    unwrap_only: &[String],
    region: Option<&str>,
    endpoints: &[String],
) -> Result<Vec<Arc<dyn Keyring>>, Failure> {
    use crate::keyring::kms::arn::KmsArn;
    let region_of = |k: &str| -> Option<String> {
        KmsArn::parse(k)
            .map(|a| a.region.to_owned())
            .or_else(|| region.map(str::to_owned))
    };
    let mut groups: Vec<(Option<String>, Vec<&str>, Vec<&str>)> = Vec::new();
    for k in keys.iter().map(|k| k.trim()) {
        let r = region_of(k);
        match groups.iter_mut().find(|g| g.0 == r) {
            Some(g) => g.1.push(k),
            None => groups.push((r, vec![k], Vec::new())),
        }
    }
    for k in unwrap_only.iter().map(|k| k.trim()) {
        let r = region_of(k);
        match groups.iter_mut().find(|g| g.0 == r) {
            Some(g) => g.2.push(k),
            None => {
                return Err(Failure::Error(format!(
                    "unwrap-only KMS key {k} is in region {}, where no --kms-key-id is configured: \
                     give a key of that region with --kms-key-id too (a KMS client is built per region)",
                    r.as_deref().unwrap_or("(default)")
                )));
            }
        }
    }
    let mut any_endpoint = None;
    let mut by_region = Vec::new();
    for e in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        match e.split_once('=') {
            Some((r, url)) if !r.contains('/') => by_region.push((r, url)),
            _ => any_endpoint = Some(e),
        }
    }
    let mut out: Vec<Arc<dyn Keyring>> = Vec::with_capacity(groups.len());
    for (r, keys, unwrap) in groups {
        let mut b = KmsKeyring::builder();
        for k in keys {
            b = b.key(k);
        }
        for k in unwrap {
            b = b.unwrap_only_key(k);
        }
        if let Some(r) = &r {
            b = b.region(r);
        }
        let endpoint = by_region
            .iter()
            .find(|(er, _)| Some(*er) == r.as_deref())
            .map(|(_, url)| *url)
            .or(any_endpoint);
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        out.push(Arc::new(b.build().await?));
    }
    Ok(out)
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
            // Where, never what: a value in the wrong place may be a key.
            Failure::Error(format!(
                "tenant keys file {} is not a JSON object of tenant -> {{kms_key_ids, kms_unwrap_only_key_ids, kms_region, kms_endpoint, local_keys_file}} \
                 ({} at line {}, column {}; values are not shown)",
                path.display(),
                match e.classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "invalid JSON",
                    _ => "unexpected value",
                },
                e.line(),
                e.column()
            ))
        })?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut out = Vec::new();
    for (tenant, t) in map {
        let mut members: Vec<Arc<dyn Keyring>> = Vec::new();
        if !t.kms_key_ids.is_empty() {
            let endpoints = match &t.kms_endpoint {
                Some(e) => vec![e.clone()],
                None => g.kms_endpoints.clone(),
            };
            members.extend(
                kms_keyrings(
                    &t.kms_key_ids,
                    &t.kms_unwrap_only_key_ids,
                    t.kms_region.as_deref().or(g.kms_region.as_deref()),
                    &endpoints,
                )
                .await?,
            );
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
    let key = crate::jobs::parse_pk_spec(pk).map_err(|e| e.to_string())?;
    Target::keyed(t, key, c).map_err(|e| e.to_string())
}
