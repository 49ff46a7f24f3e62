//! The local keyring: master keys held by the application itself.
//!
//! For development, tests, and embedded deployments where no KMS exists. Master
//! keys (key-encryption keys) are 256-bit AES-GCM keys named `name/version`, e.g.
//! `app/1`, `app/2`; one of them is the primary that wraps new data keys, the
//! others only unwrap, which is how a local master key is rotated. They are loaded
//! from JSON, given in an environment variable or a file:
//!
//! ```json
//! { "primary": "app/2", "keys": { "app/1": "<base64 32 bytes>", "app/2": "<base64 32 bytes>" } }
//! ```
//!
//! A wrapped data key is `0x01 || nonce (12) || ciphertext (32) || tag (16)`, with
//! the [`KeyContext`] (purpose, master key id, scope, key id, tenant) as
//! associated data, so a blob copied to another key-store row does not unwrap.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{GeneratedKey, Keyring};
use crate::error::{Error, KeyringErrorKind, Result};
use crate::key::{KeyContext, KeyMaterial, MasterKeyId, WrappedKey};

const BLOB_VERSION: u8 = 0x01;
const BLOB_LEN: usize = 1 + 12 + 32 + 16;
/// Prefix of every local master key id.
pub const LOCAL_PREFIX: &str = "local:";

struct Kek {
    id: MasterKeyId,
    cipher: Aes256Gcm,
}

/// Master keys held in process memory. See the [module documentation](crate::keyring::local).
pub struct LocalKeyring {
    keys: Vec<Kek>,
    primary: usize,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("primary", &self.keys[self.primary].id)
            .field(
                "keys",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The key file as parsed: the base64 key strings are zeroized on drop.
#[derive(Deserialize)]
struct KeyFile {
    primary: String,
    keys: BTreeMap<String, Zeroizing<String>>,
}

impl LocalKeyring {
    /// A keyring with one master key `name` (e.g. `app/1`), which is primary.
    pub fn new(name: &str, material: KeyMaterial) -> Result<Self> {
        Self::with_keys(name, [(name.to_owned(), material)])
    }

    /// A keyring with several master keys; `primary` names the one that wraps new
    /// data keys.
    pub fn with_keys(
        primary: &str,
        keys: impl IntoIterator<Item = (String, KeyMaterial)>,
    ) -> Result<Self> {
        let keys: Vec<Kek> = keys
            .into_iter()
            .map(|(name, m)| {
                validate_name(&name)?;
                Ok(Kek {
                    id: MasterKeyId::new(format!("{LOCAL_PREFIX}{name}")),
                    cipher: Aes256Gcm::new(m.expose().into()),
                })
            })
            .collect::<Result<_>>()?;
        let primary_id = format!("{LOCAL_PREFIX}{primary}");
        let primary = keys
            .iter()
            .position(|k| k.id.as_str() == primary_id)
            .ok_or_else(|| {
                Error::Config(format!(
                    "primary local key {primary:?} is not among the keys"
                ))
            })?;
        Ok(LocalKeyring { keys, primary })
    }

    /// Parse the JSON key file format (see the module documentation).
    pub fn from_json(json: &str) -> Result<Self> {
        let file: KeyFile = serde_json::from_str(json).map_err(|e| {
            Error::Config(format!(
                "not valid JSON of the shape {{\"primary\": \"NAME\", \"keys\": {{\"NAME\": \"<base64 of 32 random bytes>\"}}}}: line {}, column {}",
                e.line(),
                e.column()
            ))
        })?;
        let keys = file
            .keys
            .into_iter()
            .map(|(name, b64)| {
                let bytes = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| {
                    Error::Config(format!("local key {name:?} is not valid base64"))
                })?);
                let material = KeyMaterial::from_slice(&bytes)
                    .map_err(|_| Error::Config(format!("local key {name:?} must be 32 bytes")))?;
                Ok((name, material))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::with_keys(&file.primary, keys)
    }

    /// Load from a JSON key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read local key file {}: {e}",
                path.display()
            ))
        })?);
        Self::from_json(&text)
            .map_err(|e| from_source(e, &format!("local key file {}", path.display())))
    }

    /// Load from the JSON in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self> {
        let text = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| Error::Config(format!("environment variable {var} is not set")))?,
        );
        Self::from_json(&text).map_err(|e| from_source(e, &format!("environment variable {var}")))
    }

    /// Create a key file holding one fresh random master key `name` (mode 0600 on
    /// Unix) and load it. Refuses to overwrite an existing file.
    pub fn create_file(path: impl AsRef<Path>, name: &str) -> Result<Self> {
        validate_name(name)?;
        let path = path.as_ref();
        let material = KeyMaterial::generate();
        let mut b64 = Zeroizing::new(String::with_capacity(44));
        B64.encode_string(material.expose(), &mut b64);
        let mut json = Zeroizing::new(String::with_capacity(64 + 2 * name.len() + b64.len()));
        json.push_str("{\"primary\":\"");
        json.push_str(name);
        json.push_str("\",\"keys\":{\"");
        json.push_str(name);
        json.push_str("\":\"");
        json.push_str(&b64);
        json.push_str("\"}}\n");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|e| {
            Error::Config(format!(
                "cannot create local key file {}: {e}",
                path.display()
            ))
        })?;
        std::io::Write::write_all(&mut f, json.as_bytes())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
        Self::new(name, material)
    }

    /// The id of the primary master key.
    pub fn primary(&self) -> &MasterKeyId {
        &self.keys[self.primary].id
    }

    fn wrap_with(&self, kek: &Kek, ctx: &KeyContext, material: &KeyMaterial) -> WrappedKey {
        let nonce = crate::format::random_nonce();
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(material.expose());
        let aad = ctx.canonical_bytes(&kek.id);
        let tag = kek
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut blob[13..]).into())
            .expect("AES-GCM input within limits");
        blob.extend_from_slice(&tag);
        WrappedKey {
            master_key: kek.id.clone(),
            blob,
        }
    }

    fn unwrap_with(&self, kek: &Kek, ctx: &KeyContext, blob: &[u8]) -> Result<KeyMaterial> {
        let invalid = || Error::Keyring {
            kind: KeyringErrorKind::InvalidCiphertext,
            master_key: kek.id.to_string(),
            source: None,
        };
        if blob.len() != BLOB_LEN || blob[0] != BLOB_VERSION {
            return Err(invalid());
        }
        let nonce: [u8; 12] = blob[1..13].try_into().expect("12 bytes");
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&blob[13..45]);
        let tag = aes_gcm::aead::Tag::<Aes256Gcm>::try_from(&blob[45..]).expect("16 bytes");
        let aad = ctx.canonical_bytes(&kek.id);
        kek.cipher
            .decrypt_inout_detached(&Nonce::from(nonce), &aad, key.as_mut_slice().into(), &tag)
            .map_err(|_| invalid())?;
        Ok(KeyMaterial::new(*key))
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "local master key name {name:?} must be 1-128 characters of [A-Za-z0-9-_./]"
        )))
    }
}

#[async_trait]
impl Keyring for LocalKeyring {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        vec![self.primary().clone()]
    }

    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool {
        self.keys.iter().any(|k| &k.id == master_key)
    }

    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey> {
        let material = KeyMaterial::generate();
        let wrapped = vec![self.wrap_with(&self.keys[self.primary], ctx, &material)];
        Ok(GeneratedKey { material, wrapped })
    }

    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>> {
        Ok(vec![self.wrap_with(
            &self.keys[self.primary],
            ctx,
            material,
        )])
    }

    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial> {
        // Primary first, then the older versions.
        let order = std::iter::once(self.primary)
            .chain((0..self.keys.len()).filter(|i| *i != self.primary));
        let mut last = None;
        for i in order {
            let kek = &self.keys[i];
            for w in wrapped.iter().filter(|w| w.master_key == kek.id) {
                match self.unwrap_with(kek, ctx, &w.blob) {
                    Ok(m) => return Ok(m),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::no_usable_wrapped_key(self.primary().as_str())))
    }

    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        let kek =
            self.keys.iter().find(|k| &k.id == target).ok_or_else(|| {
                Error::Config(format!("master key {target} is not in this keyring"))
            })?;
        let material = self.unwrap(ctx, std::slice::from_ref(wrapped)).await?;
        Ok(self.wrap_with(kek, ctx, &material))
    }
}

/// A configuration error about key JSON, prefixed with where the JSON came
/// from (a file's path, an environment variable's name): never its content.
fn from_source(e: Error, source: &str) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{source}: {m}")),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file that does not parse: the error names the file, the shape
    /// expected and where parsing stopped, never what the file holds.
    #[test]
    fn a_bad_key_file_names_the_file_and_the_shape_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let pasted = "c2VjcmV0IGtleSBtYXRlcmlhbCwgbm90IHRvIGJlIHByaW50ZWQ=";
        std::fs::write(&path, format!("{{\"app/1\": \"{pasted}\"}}")).unwrap();
        let Err(Error::Config(said)) = LocalKeyring::from_file(&path) else {
            panic!("a key file without primary and keys must not load");
        };
        assert!(
            said.starts_with(&format!("local key file {}: ", path.display())),
            "{said}"
        );
        assert!(said.contains("{\"primary\": \"NAME\", \"keys\""), "{said}");
        assert!(said.contains("line 1, column"), "{said}");
        assert!(!said.contains(pasted), "{said}");
        // A key that is not base64: named by its name, not its value.
        std::fs::write(
            &path,
            r#"{"primary": "app/1", "keys": {"app/1": "not base64!"}}"#,
        )
        .unwrap();
        let Err(Error::Config(said)) = LocalKeyring::from_file(&path) else {
            panic!("a key that is not base64 must not load");
        };
        assert!(
            said.contains("keys.json: local key \"app/1\" is not valid base64"),
            "{said}"
        );
        assert!(!said.contains("not base64!"), "{said}");
    }
}
