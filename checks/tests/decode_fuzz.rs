//! Random and mutated bytes against every decode path: the value header,
//! opening, every field codec, padding, the hidden-NULL marker, wrapped keys
//! (local keyring blobs, branch wraps) and key-store rows with odd lengths.
//! Nothing may panic; everything must come back as a typed error (or, for a
//! mutation that leaves the bytes valid, as the right value). Bounded case
//! counts keep the suite within seconds.

#[path = "../../tests/support/mod.rs"]
mod support;

use proptest::prelude::*;
use sqlx_envelope::hierarchy::BranchKey;
use sqlx_envelope::model::plain::{CodecId, decode_plain};
use sqlx_envelope::model::{FieldCodec, Json, padding};
use sqlx_envelope::{
    Context, DataKey, Error, KeyContext, KeyId, KeyMaterial, Keyring, LocalKeyring, MasterKeyId,
    RowId, WrappedKey, format,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::Malformed(_)
            | Error::Authentication
            | Error::Codec { .. }
            | Error::Keyring { .. }
            | Error::UnknownKey(_)
    )
}

/// Decode `bytes` as every built-in field type; all must return, none panic.
fn decode_all(bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => {$( let _ = <$t as FieldCodec>::decode(bytes); )*};
    }
    each!(
        String,
        Vec<u8>,
        bool,
        i8,
        i16,
        i32,
        i64,
        i128,
        u8,
        u16,
        u32,
        u64,
        u128,
        f32,
        f64,
        char,
        serde_json::Value,
        Json<Vec<String>>,
        Option<i64>,
        Option<String>,
        Option<Option<u8>>,
        uuid::Uuid,
        chrono::NaiveDate,
        chrono::NaiveTime,
        chrono::NaiveDateTime,
        chrono::DateTime<chrono::Utc>
    );
    for c in CodecId::ALL {
        let _ = decode_plain(*c, bytes);
    }
    let _ = padding::unpad(bytes);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        decode_all(&bytes);
        if let Err(e) = format::parse_header(&bytes) {
            prop_assert!(matches!(e, Error::Malformed(_)));
        }
        let key = DataKey::new(KeyId::new(1), &KeyMaterial::new([3; 32]));
        let row = RowId::from(1_i64);
        let ctx = Context::new("t", "c", &row);
        if let Err(e) = format::open(&key, &ctx, &bytes) {
            prop_assert!(typed(&e), "{e:?}");
        }
        if let Err(e) = format::open_in_place(&key, &ctx, bytes.clone()) {
            prop_assert!(typed(&e), "{e:?}");
        }
    }

    #[test]
    fn mutated_values_fail_authentication_or_open_to_the_original(
        pt in proptest::collection::vec(any::<u8>(), 0..100),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
    ) {
        let key = DataKey::new(KeyId::new(7), &KeyMaterial::new([9; 32]));
        let row = RowId::from(5_i64);
        let ctx = Context::new("t", "c", &row);
        let sealed = format::seal(&key, &ctx, &pt);
        let mut bad = sealed.clone();
        for (i, x) in &flips {
            let i = i % bad.len();
            bad[i] ^= x;
        }
        match format::open(&key, &ctx, &bad) {
            Ok(back) => prop_assert_eq!(&back[..], &pt[..]),
            Err(e) => prop_assert!(typed(&e), "{:?}", e),
        }
        let short = &sealed[..cut % sealed.len()];
        let e = format::open(&key, &ctx, short).unwrap_err();
        prop_assert!(typed(&e), "{:?}", e);
        // Decoding what a mutation may have opened to never panics either.
        decode_all(&bad[format::HEADER_LEN.min(bad.len())..]);
    }

    #[test]
    fn wrapped_keys_with_random_or_mutated_blobs_are_refused(
        blob in proptest::collection::vec(any::<u8>(), 0..120),
        flip in any::<usize>(),
    ) {
        let ctx = KeyContext::data("s", Some("t"), KeyId::new(3));
        let local = LocalKeyring::new("fuzz/1", KeyMaterial::new([1; 32])).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let random = WrappedKey { master_key: MasterKeyId::new("local:fuzz/1"), blob: blob.clone() };
        let e = rt.block_on(local.unwrap(&ctx, &[random])).unwrap_err();
        prop_assert!(typed(&e), "{:?}", e);
        let good = rt.block_on(local.wrap(&ctx, &KeyMaterial::new([2; 32]))).unwrap();
        let mut bad = good[0].clone();
        let i = flip % bad.blob.len();
        bad.blob[i] ^= 0x40;
        let e = rt.block_on(local.unwrap(&ctx, &[bad])).unwrap_err();
        prop_assert!(typed(&e), "{:?}", e);

        let branch = BranchKey::new(KeyId::new(4), &KeyMaterial::new([5; 32]));
        prop_assert!(branch.unwrap(&ctx, &blob).is_err());
        let mut wrapped = branch.wrap(&ctx, &KeyMaterial::new([6; 32]));
        let i = flip % wrapped.len();
        wrapped[i] ^= 0x01;
        prop_assert!(branch.unwrap(&ctx, &wrapped).is_err());
    }
}

/// Key-store rows with wrapped material of odd lengths (a damaged or forged
/// row in the database): opening values under them is a typed error on every
/// database, never a panic.
#[tokio::test]
async fn key_store_rows_with_odd_lengths_are_typed_errors() {
    for kind in support::ALL {
        let db = support::Db::connect(kind).await;
        let keyring = std::sync::Arc::new(support::local_keyring());
        let mk = || {
            sqlx_envelope::Envelope::builder()
                .keyring_arc(keyring.clone())
                .store_arc(db.key_store())
                .build()
                .unwrap()
        };
        let t = support::unique("fuzz_rows");
        let row = RowId::from(1_i64);
        let ctx = Context::new(&t, "v", &row);
        let v = mk().seal(&ctx, b"v").await.unwrap();
        let rec = db.key_store().get(v.key_id()).await.unwrap().unwrap();
        let branch = rec.parent.clone().unwrap().parent;
        for len in [0usize, 1, 12, 44, 60, 62, 200] {
            let odd = vec![0x5a_u8; len];
            let set_parent = match kind {
                support::Kind::Postgres => {
                    "UPDATE sqlx_envelope_data_keys SET parent_blob = $1 WHERE id = $2"
                }
                _ => "UPDATE sqlx_envelope_data_keys SET parent_blob = ? WHERE id = ?",
            };
            match &db {
                support::Db::Postgres(p) => sqlx::query(set_parent)
                    .bind(&odd)
                    .bind(v.key_id().as_i64())
                    .execute(p)
                    .await
                    .map(|_| ()),
                support::Db::MySql(p) => sqlx::query(set_parent)
                    .bind(&odd)
                    .bind(v.key_id().as_i64())
                    .execute(p)
                    .await
                    .map(|_| ()),
                support::Db::Sqlite(p, _) => sqlx::query(set_parent)
                    .bind(&odd)
                    .bind(v.key_id().as_i64())
                    .execute(p)
                    .await
                    .map(|_| ()),
            }
            .unwrap();
            let e = mk().open(&ctx, &v).await.unwrap_err();
            assert!(typed(&e), "{kind:?} parent blob of {len} bytes: {e:?}");
            // The branch key's own blob, odd too.
            db.key_store()
                .put_wrapped(
                    branch,
                    &WrappedKey {
                        master_key: keyring.primary().clone(),
                        blob: odd,
                    },
                )
                .await
                .unwrap();
            let e = mk().open(&ctx, &v).await.unwrap_err();
            assert!(typed(&e), "{kind:?} branch blob of {len} bytes: {e:?}");
        }
    }
}
