//! Quickstart: no environment, no server, no setup.
//!
//! SQLite in `target/quickstart/`, a local development master key that this
//! example creates next to it, the key-store migrations, a few encrypted rows,
//! and a demonstration that a value copied into another row does not decrypt.
//!
//! Run with `cargo run --example quickstart`.

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Context, Envelope, Error, LocalKeyring, RowId, Sealed};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/quickstart");
    std::fs::create_dir_all(&dir)?;

    // 1. A local master key. In production this is a KMS key (feature `aws-kms`).
    let key_file = dir.join("dev-master-key.json");
    let keyring = if key_file.exists() {
        println!("using the development master key in {}", key_file.display());
        LocalKeyring::from_file(&key_file)?
    } else {
        println!(
            "created a development master key in {} (for development only: keep real keys in KMS)",
            key_file.display()
        );
        LocalKeyring::create_file(&key_file, "dev/1")?
    };

    // 2. The database, and the key store's migrations.
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.join("quickstart.db"))
                .create_if_missing(true),
        )
        .await?;
    let store = SqliteKeyStore::new(pool.clone());
    store.migrate().await?;
    sqlx::query("DROP TABLE IF EXISTS customers")
        .execute(&pool)
        .await?;
    sqlx::query(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email BLOB NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let envelope = Envelope::builder().keyring(keyring).store(store).build()?;

    // 3. Insert rows: the email column holds sealed values, bound to (table, column, id).
    let people = [
        (1_i64, "Ada", "ada@example.com"),
        (2, "Grace", "grace@example.com"),
    ];
    for (id, name, email) in people {
        let row = RowId::from(id);
        let sealed = envelope
            .seal(&Context::new("customers", "email", &row), email.as_bytes())
            .await?;
        sqlx::query("INSERT INTO customers (id, name, email) VALUES (?, ?, ?)")
            .bind(id)
            .bind(name)
            .bind(&sealed)
            .execute(&pool)
            .await?;
    }

    // 4. Read them back with an ordinary query, and open the sealed column.
    let rows = sqlx::query("SELECT id, name, email FROM customers ORDER BY id")
        .fetch_all(&pool)
        .await?;
    for r in &rows {
        let id: i64 = r.get("id");
        let sealed: Sealed = r.get("email");
        let row = RowId::from(id);
        let email = envelope
            .open(&Context::new("customers", "email", &row), &sealed)
            .await?;
        println!(
            "row {id}: {} <{}>  (stored: {} bytes under data key {})",
            r.get::<String, _>("name"),
            String::from_utf8_lossy(&email),
            sealed.len(),
            sealed.key_id()
        );
    }

    // 5. What the database actually holds: not plaintext.
    let raw: Vec<u8> = sqlx::query_scalar("SELECT email FROM customers WHERE id = 1")
        .fetch_one(&pool)
        .await?;
    println!("raw bytes of row 1's email: {}", hex(&raw));
    assert!(
        !raw.windows(3).any(|w| w == b"ada"),
        "plaintext in the database"
    );

    // 6. Copy Ada's email into Grace's row: it no longer decrypts.
    sqlx::query(
        "UPDATE customers SET email = (SELECT email FROM customers WHERE id = 1) WHERE id = 2",
    )
    .execute(&pool)
    .await?;
    let copied: Sealed = sqlx::query_scalar("SELECT email FROM customers WHERE id = 2")
        .fetch_one(&pool)
        .await?;
    let row2 = RowId::from(2_i64);
    match envelope
        .open(&Context::new("customers", "email", &row2), &copied)
        .await
    {
        Err(Error::Authentication) => {
            println!(
                "row 1's email copied into row 2 fails to decrypt: {}",
                Error::Authentication
            )
        }
        other => return Err(format!("a copied value must not decrypt, got {other:?}").into()),
    }

    let stats = envelope.stats();
    println!(
        "data keys minted: {} (under {} branch key(s)); master keyring calls: {} generate, {} unwrap; cache hits: {}",
        stats.data_keys_minted,
        stats.branch_keys_minted,
        stats.keyring_generate_calls,
        stats.keyring_unwrap_calls,
        stats.encrypt_hits + stats.decrypt_hits
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
