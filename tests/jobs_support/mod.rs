//! Helpers shared by the `jobs_*` tests: pools for the jobs API, bulk seeding,
//! key files and the CLI binary. Included with `mod jobs_support;` next to
//! `mod support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sqlx_envelope::jobs::JobPool;
use sqlx_envelope::{Context, Envelope, KeyId, LocalKeyring, RowId};

use crate::support::{Db, Kind};

/// The jobs API's pool over a test database.
pub fn job_pool(db: &Db) -> JobPool {
    match db {
        Db::Postgres(p) => JobPool::from(p.clone()),
        Db::MySql(p) => JobPool::from(p.clone()),
        Db::Sqlite(p, _) => JobPool::from(p.clone()),
    }
}

/// A URL another process (the CLI) can open the same database with.
pub fn db_url(db: &Db) -> String {
    db.url()
}

/// A local master key file in `dir` with the given `name -> key` entries.
pub fn write_key_file(dir: &Path, file: &str, primary: &str, keys: &[(&str, [u8; 32])]) -> PathBuf {
    let b64 = base64::engine::general_purpose::STANDARD;
    let entries: BTreeMap<&str, String> = keys.iter().map(|(n, k)| (*n, b64.encode(k))).collect();
    let json = serde_json::json!({ "primary": primary, "keys": entries });
    let path = dir.join(file);
    std::fs::write(&path, json.to_string()).expect("write key file");
    path
}

/// 32 random bytes.
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .enumerate()
    {
        k[i] = *b;
    }
    k
}

/// An envelope over `db` with the keyring of `key_file`.
pub fn envelope_from_file(db: &Db, key_file: &Path) -> Envelope {
    Envelope::builder()
        .keyring(LocalKeyring::from_file(key_file).expect("key file"))
        .store_arc(db.key_store())
        .build()
        .expect("envelope")
}

/// Insert `(id, value)` rows into `table (id, col)` with multi-row INSERTs of
/// 1,000 rows, each in a transaction.
pub async fn insert_many(db: &Db, table: &str, col: &str, rows: &[(i64, Vec<u8>)]) {
    for batch in rows.chunks(1000) {
        let values: Vec<String> = (0..batch.len())
            .map(|i| match db.kind() {
                Kind::Postgres => format!("(${}, ${})", 2 * i + 1, 2 * i + 2),
                _ => "(?, ?)".to_owned(),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} (id, {col}) VALUES {}",
            values.join(", ")
        );
        macro_rules! go {
            ($p:expr) => {{
                let mut tx = $p.begin().await.expect("begin");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for (id, v) in batch {
                    q = q.bind(*id).bind(v.clone());
                }
                q.execute(&mut *tx).await.expect("insert");
                tx.commit().await.expect("commit");
            }};
        }
        match db {
            Db::Postgres(p) => go!(p),
            Db::MySql(p) => go!(p),
            Db::Sqlite(p, _) => go!(p),
        }
    }
}

/// Every `(id, value)` of `table.col`, by id.
pub async fn all_rows(db: &Db, table: &str, col: &str) -> Vec<(i64, Option<Vec<u8>>)> {
    let sql = format!("SELECT id, {col} FROM {table} ORDER BY id");
    let sql = sqlx::AssertSqlSafe(sql);
    match db {
        Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
        Db::MySql(p) => sqlx::query_as(sql).fetch_all(p).await,
        Db::Sqlite(p, _) => sqlx::query_as(sql).fetch_all(p).await,
    }
    .expect("all rows")
}

/// Unconditional application write of one sealed value.
pub async fn app_update(db: &Db, table: &str, col: &str, id: i64, value: &[u8]) {
    let sql = match db.kind() {
        Kind::Postgres => format!("UPDATE {table} SET {col} = $1 WHERE id = $2"),
        _ => format!("UPDATE {table} SET {col} = ? WHERE id = ?"),
    };
    let sql = sqlx::AssertSqlSafe(sql);
    match db {
        Db::Postgres(p) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::MySql(p) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(p, _) => sqlx::query(sql)
            .bind(value)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .expect("app update");
}

/// The plaintext the seed gives row `id`.
pub fn seed_plaintext(id: i64) -> String {
    format!("secret-{id:08}-{}", "x".repeat((id % 17) as usize))
}

/// Create `table (id BIGINT PRIMARY KEY, secret blob)` and seal `n` rows
/// (ids 1..=n) under one data key, which is returned.
pub async fn seed(db: &Db, envelope: &Envelope, table: &str, n: i64) -> KeyId {
    db.create_blob_table(table, &["secret"]).await;
    let mut rows = Vec::with_capacity(n as usize);
    let mut key = None;
    for id in 1..=n {
        let row = RowId::from(id);
        let ctx = Context::new(table, "secret", &row);
        let sealed = envelope
            .seal(&ctx, seed_plaintext(id).as_bytes())
            .await
            .expect("seal");
        let k = *key.get_or_insert(sealed.key_id());
        assert_eq!(sealed.key_id(), k, "the seed uses one data key");
        rows.push((id, sealed.into_bytes()));
    }
    insert_many(db, table, "secret", &rows).await;
    key.expect("at least one row")
}

/// Open every row of `table.secret` and return `id -> plaintext` plus the set
/// of key ids seen.
pub async fn open_all(
    db: &Db,
    envelope: &Envelope,
    table: &str,
) -> (BTreeMap<i64, String>, BTreeMap<KeyId, u64>) {
    let rows = all_rows(db, table, "secret").await;
    let mut out = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for chunk in rows.chunks(2000) {
        let ids: Vec<RowId> = chunk.iter().map(|(id, _)| RowId::from(*id)).collect();
        let items: Vec<(Context<'_>, &[u8])> = chunk
            .iter()
            .zip(&ids)
            .map(|((_, v), rid)| {
                (
                    Context::new(table, "secret", rid),
                    v.as_deref().expect("no NULL values"),
                )
            })
            .collect();
        let opened = envelope.open_many(&items).await.expect("every row opens");
        for (((id, v), pt), _) in chunk.iter().zip(opened).zip(&ids) {
            let key = sqlx_envelope::Sealed::from_bytes(v.clone().unwrap())
                .unwrap()
                .key_id();
            *keys.entry(key).or_insert(0) += 1;
            out.insert(*id, String::from_utf8(pt.into_vec()).expect("utf-8"));
        }
    }
    (out, keys)
}

/// The CLI binary with the database and key file configured and nothing else
/// inherited from the environment that could change its behaviour.
pub fn cli(db_url: &str, key_file: &Path) -> Command {
    tool_env(
        Command::new(env!("CARGO_BIN_EXE_sqlx-envelope")),
        db_url,
        key_file,
    )
}

/// The README's `Patient` model in an application's own tool
/// (`examples/patient_tool.rs`: `sqlx_envelope::cli::main_with_models`), with
/// the environment of [`cli`]. `cargo test` builds it with the examples.
pub fn patient_tool(db_url: &str, key_file: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_sqlx-envelope"))
        .with_file_name("examples")
        .join("patient_tool");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build --all-features --example patient_tool` (cargo test builds it with the examples)",
        bin.display()
    );
    tool_env(Command::new(bin), db_url, key_file)
}

/// The environment every CLI run of the tests gets: this database, this key
/// file, no KMS keys or worker id from the caller's environment.
fn tool_env(mut c: Command, db_url: &str, key_file: &Path) -> Command {
    c.env_remove("SQLX_ENVELOPE_KMS_KEY_IDS")
        .env_remove("SQLX_ENVELOPE_KMS_UNWRAP_ONLY_KEY_IDS")
        .env_remove("SQLX_ENVELOPE_WORKER_ID")
        .env("DATABASE_URL", db_url)
        .env("SQLX_ENVELOPE_LOCAL_KEYS_FILE", key_file)
        .env("SQLX_ENVELOPE_LOG", "warn")
        .arg("--no-progress");
    c
}

/// Retire every active data key (an operator's rotation); the retired ids,
/// sorted.
pub async fn retire_active(envelope: &Envelope) -> Vec<KeyId> {
    let mut old = Vec::new();
    for k in envelope.keys().await.expect("keys") {
        if k.kind == sqlx_envelope::KeyKind::Data && k.state == sqlx_envelope::KeyState::Active {
            envelope
                .set_key_state(k.id, sqlx_envelope::KeyState::DecryptOnly)
                .await
                .expect("retire");
            old.push(k.id);
        }
    }
    assert!(!old.is_empty(), "no active data key to retire");
    old.sort();
    old
}
