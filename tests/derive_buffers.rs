//! Plaintext buffers: on the seal path each is reserved once for its final
//! length (marker, value, padding) and never reallocates, which would free an
//! unwiped copy; on the open path each value is decrypted in the buffer it was
//! read into, and `String`/`Vec<u8>` fields take that buffer over.
#![cfg(all(feature = "sqlite", feature = "uuid", feature = "chrono"))]

use serde::{Deserialize, Serialize};
use sqlx_envelope::store::{KeyStore, SqliteKeyStore};
use sqlx_envelope::{Encrypted, Envelope, FieldCodec, Json, KeyMaterial, LocalKeyring, Result};

/// An envelope over a key store in a fresh SQLite file (default features
/// only: this test runs in every build that has SQLite).
async fn envelope() -> (Envelope, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("keys.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("sqlite");
    let store = SqliteKeyStore::new(pool);
    store.migrate().await.expect("migrate");
    let keyring = LocalKeyring::new("test/1", KeyMaterial::generate()).expect("keyring");
    let envelope = Envelope::builder()
        .keyring(keyring)
        .store(store)
        .build()
        .expect("envelope");
    (envelope, dir)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Notes {
    allergies: Vec<String>,
    history: String,
}

#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "buffers")]
struct Everything {
    id: i64,
    #[encrypt]
    text: String,
    #[encrypt]
    bytes: Vec<u8>,
    #[encrypt]
    flag: bool,
    #[encrypt]
    int: i64,
    #[encrypt]
    huge: u128,
    #[encrypt]
    uuid: uuid::Uuid,
    #[encrypt]
    date: chrono::NaiveDate,
    #[encrypt]
    value: serde_json::Value,
    #[encrypt]
    wrapped: Json<Notes>,
    #[encrypt(json)]
    notes: Notes,
    #[encrypt(pad = 16)]
    padded: String,
    #[encrypt]
    optional: Option<String>,
    #[encrypt(hide_null)]
    hidden_int: Option<i64>,
    #[encrypt(hide_null, pad = 8)]
    hidden_text: Option<String>,
    #[encrypt(json, hide_null, pad = 32)]
    hidden_notes: Option<Notes>,
}

fn notes() -> Notes {
    Notes {
        allergies: vec!["penicillin".into(), "latex".into()],
        history: "a history long enough to need more than one allocation step".into(),
    }
}

fn full() -> Everything {
    Everything {
        id: 1,
        text: "Ada Lovelace, Countess of Lovelace".into(),
        bytes: vec![7; 100],
        flag: true,
        int: -3,
        huge: u128::MAX,
        uuid: uuid::Uuid::now_v7(),
        date: chrono::NaiveDate::from_ymd_opt(1815, 12, 10).expect("date"),
        value: serde_json::json!({"a": [1, 2, 3], "b": "c"}),
        wrapped: Json(notes()),
        notes: notes(),
        padded: "+44 20 7946 0958 ext. 12".into(),
        optional: Some("x".repeat(300)),
        hidden_int: Some(9),
        hidden_text: Some("hidden".into()),
        hidden_notes: Some(notes()),
    }
}

fn empty() -> Everything {
    Everything {
        text: String::new(),
        bytes: Vec::new(),
        optional: None,
        hidden_int: None,
        hidden_text: None,
        hidden_notes: None,
        ..full()
    }
}

#[test]
fn seal_buffers_are_reserved_once_and_never_grow() {
    for model in [full(), empty()] {
        for (field, column) in Everything::DESCRIPTION.encrypted.iter().enumerate() {
            let Some(buf) = model.__encode_field(field).expect("encode") else {
                assert_eq!(column.column, "optional", "only a NULL has no buffer");
                continue;
            };
            assert!(
                !buf.reallocated(),
                "{}: the buffer outgrew its reservation",
                column.column
            );
        }
    }
}

/// A type whose size hint is too small: the check above would catch it.
#[derive(Debug, Clone, PartialEq)]
struct Understated(String);

impl FieldCodec for Understated {
    fn size_hint(&self) -> usize {
        1
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        String::decode(bytes).map(Understated)
    }
}

#[derive(Encrypted)]
#[envelope(table = "understated")]
struct Careless {
    id: i64,
    #[encrypt]
    text: Understated,
}

#[test]
fn an_understated_size_hint_is_detected() {
    let model = Careless {
        id: 1,
        text: Understated("longer than one byte".into()),
    };
    let buf = model.__encode_field(0).expect("encode").expect("set");
    assert!(buf.reallocated());
}

#[tokio::test(flavor = "multi_thread")]
async fn opened_strings_and_bytes_own_the_decrypted_buffer() {
    let (env, _dir) = envelope().await;
    let model = full();
    let sealed = model.seal(&env).await.expect("seal");
    // The ciphertext lengths are the capacities of the buffers the values
    // were read into: a field that owns its buffer has exactly that capacity,
    // a copy would have the plaintext's.
    let lens = (
        sealed.text.len(),
        sealed.bytes.len(),
        sealed.padded.len(),
        sealed.optional.as_ref().expect("set").len(),
        sealed.hidden_text.len(),
    );
    let opened = sealed.open(&env).await.expect("open");
    assert_eq!(opened, model);
    assert_eq!(opened.text.capacity(), lens.0, "text");
    assert_eq!(opened.bytes.capacity(), lens.1, "bytes");
    assert_eq!(opened.padded.capacity(), lens.2, "padded");
    assert_eq!(
        opened.optional.as_ref().expect("set").capacity(),
        lens.3,
        "optional"
    );
    assert_eq!(
        opened.hidden_text.as_ref().expect("set").capacity(),
        lens.4,
        "hidden_text"
    );
    assert!(lens.0 > opened.text.len(), "the overhead is spare capacity");

    let model = empty();
    let opened = model
        .seal(&env)
        .await
        .expect("seal")
        .open(&env)
        .await
        .expect("open");
    assert_eq!(opened, model);
}
