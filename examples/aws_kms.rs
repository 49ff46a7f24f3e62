//! Envelope encryption with data keys wrapped by AWS KMS.
//!
//! ```sh
//! SQLX_ENVELOPE_KMS_KEY_ID=alias/my-app AWS_REGION=eu-west-1 \
//!     cargo run --example aws_kms --features aws-kms
//! ```
//!
//! Environment (see docs/kms.md):
//! - `SQLX_ENVELOPE_KMS_KEY_ID` (required): key id, key ARN, alias name or alias ARN;
//! - `AWS_REGION` / `AWS_PROFILE` / credentials: the standard AWS chain;
//! - `AWS_ENDPOINT_URL` (optional): a local KMS such as moto;
//! - `DATABASE_URL` (optional): `postgres://` (add `--features postgres`),
//!   `mysql://` (add `--features mysql`) or `sqlite:`; default a SQLite file in
//!   the temporary directory, one per KMS key (the default feature `sqlite`).
//!
//! With nothing set it prints what to set and exits with status 2.

use std::process::ExitCode;

use sqlx_envelope::keyring::kms::KmsKeyring;
use sqlx_envelope::store::KeyStore;
use sqlx_envelope::{Context, Envelope, Error, RowId};

const KEY_VAR: &str = "SQLX_ENVELOPE_KMS_KEY_ID";

const USAGE: &str = "\
usage: cargo run --example aws_kms --features aws-kms

Set:
  SQLX_ENVELOPE_KMS_KEY_ID  the KMS key: key id, key ARN, alias/<name> or alias ARN (required)
  AWS_REGION                the key's region (or a profile with a region: AWS_PROFILE)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or AWS_PROFILE
                            credentials, through the standard AWS chain
  AWS_ENDPOINT_URL          optional: a local KMS endpoint, e.g. http://127.0.0.1:5000 (moto)
  DATABASE_URL              optional: postgres://..., mysql://... or sqlite:...
                            (default: a SQLite file in the temporary directory)

Against a local moto server:
  target/moto-venv/bin/moto_server -p 5000 &
  export AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_REGION=us-east-1 \\
         AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  export AWS_DEFAULT_REGION=us-east-1 SQLX_ENVELOPE_KMS_KEY_ID=$(target/moto-venv/bin/python -c \\
    \"import boto3; print(boto3.client('kms').create_key()['KeyMetadata']['Arn'])\")
See docs/kms.md.";

#[tokio::main]
async fn main() -> ExitCode {
    let key = match std::env::var(KEY_VAR) {
        Ok(k) if !k.trim().is_empty() => k,
        _ => {
            eprintln!("{KEY_VAR} is not set.\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&key).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Config(_)) => {
            eprintln!("error: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!("\n  caused by: {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

async fn key_store() -> Result<(String, Box<dyn KeyStore>), Error> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        // One file per KMS key: keys wrapped by another master key (an earlier
        // run against another key, or a restarted local KMS) cannot open here.
        let key: String = std::env::var(KEY_VAR)
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .rev()
            .take(48)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let path = std::env::temp_dir().join(format!("sqlx_envelope_aws_kms_example_{key}.db"));
        format!("sqlite://{}?mode=rwc", path.display())
    });
    let scheme = url.split(':').next().unwrap_or("").to_owned();
    let store: Box<dyn KeyStore> = match scheme.as_str() {
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Box::new(sqlx_envelope::store::PgKeyStore::new(
            sqlx::PgPool::connect(&url).await?,
        )),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Box::new(sqlx_envelope::store::MySqlKeyStore::new(
            sqlx::MySqlPool::connect(&url.replacen("mariadb:", "mysql:", 1)).await?,
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => Box::new(sqlx_envelope::store::SqliteKeyStore::new(
            sqlx::SqlitePool::connect(&url).await?,
        )),
        other => {
            let feature = match other {
                "postgres" | "postgresql" => " (add --features postgres)",
                "mysql" | "mariadb" => " (add --features mysql)",
                "sqlite" => " (add --features sqlite)",
                _ => "",
            };
            return Err(Error::Config(format!(
                "DATABASE_URL scheme {other:?} is not compiled into this build{feature}; postgres://, mysql:// and sqlite: are supported"
            )));
        }
    };
    store.migrate().await?;
    // Print the URL without credentials.
    let shown = match url.split_once('@') {
        Some((scheme_user, host)) => {
            format!(
                "{}://…@{host}",
                scheme_user.split("://").next().unwrap_or("")
            )
        }
        None => url,
    };
    Ok((shown, store))
}

async fn run(key: &str) -> Result<(), Error> {
    // Credentials, region, profile and AWS_ENDPOINT_URL from the standard chain;
    // the alias or key id is resolved to the key ARN (DescribeKey) here.
    let keyring = KmsKeyring::builder().key(key).build().await?;
    println!(
        "KMS key  {}  (region {})",
        keyring.primary(),
        keyring.region()
    );

    let (db, store) = key_store().await?;
    let store: std::sync::Arc<dyn KeyStore> = store.into();
    println!("key store {db}");

    let writer = Envelope::builder()
        .keyring(keyring.clone())
        .store_arc(store.clone())
        .build()?;
    let emails = ["ada@example.com", "grace@example.com", "edsger@example.com"];
    let mut sealed = Vec::new();
    for (i, email) in emails.iter().enumerate() {
        let row = RowId::from(i as i64 + 1);
        let value = writer
            .seal(
                &Context::new("example_users", "email", &row),
                email.as_bytes(),
            )
            .await?;
        println!(
            "sealed row {}: {} plaintext bytes -> {} stored bytes under data key {}",
            i + 1,
            email.len(),
            value.len(),
            value.key_id()
        );
        sealed.push(value);
    }

    // A fresh envelope has nothing cached: one Decrypt for the one data key.
    let reader = Envelope::builder()
        .keyring(keyring.clone())
        .store_arc(store)
        .build()?;
    for (i, value) in sealed.iter().enumerate() {
        let row = RowId::from(i as i64 + 1);
        let pt = reader
            .open(&Context::new("example_users", "email", &row), value)
            .await?;
        assert_eq!(pt.as_bytes(), emails[i].as_bytes());
    }
    println!("opened {} values through a cold cache", sealed.len());

    let m = keyring.metrics();
    println!(
        "KMS calls: DescribeKey {}, GenerateDataKey {}, Decrypt {}, Encrypt {}; failures {}, throttles {}, retries {}; mean latency {:.1} ms",
        m.describe_key_calls,
        m.generate_data_key_calls,
        m.decrypt_calls,
        m.encrypt_calls,
        m.failures,
        m.throttles,
        m.retries,
        m.total_latency_us as f64 / 1000.0 / m.total_calls().max(1) as f64
    );
    Ok(())
}
