//! Round trips through a real KMS API (moto over HTTP, the real aws-sdk-kms
//! client) and the real databases.
#![cfg(feature = "aws-kms")]

mod support;

use sqlx_envelope::keyring::kms::{KmsConfig, KmsKeyring};
use sqlx_envelope::{
    Context, Envelope, Error, KeyContext, KeyId, Keyring, KeyringErrorKind, MasterKeyId, RowId,
    WrappedKey,
};
use support::moto::Moto;
use support::{ALL, Db, unique};

fn kctx(scope: &str, tenant: Option<&str>, id: u64) -> KeyContext {
    KeyContext {
        kind: sqlx_envelope::key::KeyKind::Data,
        scope: scope.into(),
        tenant: tenant.map(Into::into),
        key_id: KeyId::new(id),
    }
}

fn refused(e: &Error) -> KeyringErrorKind {
    match e {
        Error::Keyring { kind, .. } => *kind,
        other => panic!("expected a keyring refusal, got {other:?}"),
    }
}

async fn keyring(client: &aws_sdk_kms::Client, key: &str) -> KmsKeyring {
    KmsKeyring::builder()
        .client(client.clone())
        .key(key)
        .config(KmsConfig::default())
        .build()
        .await
        .expect("keyring")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_kms_on_every_database() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let arn = moto.create_key(&client).await;
    let alias = moto.create_alias(&client, "rt-app", &arn).await;
    // Configured by alias: resolved to the key ARN at build time.
    let kr = keyring(&client, &alias).await;
    assert_eq!(kr.primary().as_str(), arn);
    assert_eq!(kr.metrics().describe_key_calls, 1);

    for kind in ALL {
        let db = Db::connect(kind).await;
        let table = unique("kms_rt");
        db.create_blob_table(&table, &["secret"]).await;
        let writer = Envelope::builder()
            .keyring(kr.clone())
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let gdk_before = kr.metrics().generate_data_key_calls;
        for id in 1..=20_i64 {
            let row = RowId::from(id);
            let ctx = Context::new(&table, "secret", &row);
            let sealed = writer
                .seal(&ctx, format!("secret #{id} on {kind:?}").as_bytes())
                .await
                .expect("seal");
            db.put_sealed(&table, "secret", id, &sealed).await;
        }
        assert_eq!(
            kr.metrics().generate_data_key_calls - gdk_before,
            1,
            "{kind:?}"
        );

        // One data key, wrapped by the scope's branch key; the key store holds
        // the branch key's KMS blob under the key ARN KMS reported.
        // (PostgreSQL and MariaDB keep the key table across runs: filter by scope.)
        let keys: Vec<_> = writer
            .keys()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.scope == table)
            .collect();
        assert_eq!(keys.len(), 1, "{kind:?}");
        assert!(
            keys[0].wrapped.is_empty(),
            "data keys are not wrapped by KMS"
        );
        let branch_id = keys[0].parent.as_ref().expect("branch-wrapped").parent;
        let branch = db.key_store().get(branch_id).await.unwrap().unwrap();
        assert_eq!(branch.kind, sqlx_envelope::KeyKind::Branch);
        assert_eq!(branch.scope, table);
        assert_eq!(branch.wrapped.len(), 1);
        assert_eq!(branch.wrapped[0].master_key.as_str(), arn);
        assert!(branch.wrapped[0].blob.len() > 32);
        assert!(kr.can_unwrap(&branch.wrapped[0].master_key));

        // Cold read through a fresh envelope: one Decrypt, for the branch key.
        let reader = Envelope::builder()
            .keyring(kr.clone())
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let dec_before = kr.metrics().decrypt_calls;
        for id in 1..=20_i64 {
            let row = RowId::from(id);
            let ctx = Context::new(&table, "secret", &row);
            let sealed = db
                .get_sealed(&table, "secret", id)
                .await
                .unwrap()
                .expect("not null");
            let pt = reader.open(&ctx, &sealed).await.expect("open");
            assert_eq!(
                pt.as_bytes(),
                format!("secret #{id} on {kind:?}").as_bytes()
            );
        }
        assert_eq!(kr.metrics().decrypt_calls - dec_before, 1, "{kind:?}");
    }
    assert_eq!(kr.metrics().failures, 0);
}

#[tokio::test]
async fn wrong_encryption_context_and_wrong_key_are_rejected() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key_a = moto.create_key(&client).await;
    let key_b = moto.create_key(&client).await;
    let kr_a = keyring(&client, &key_a).await;
    // Configured by bare key id: resolved to the ARN.
    let key_b_id = key_b.rsplit('/').next().unwrap().to_owned();
    let kr_b = keyring(&client, &key_b_id).await;
    assert_eq!(kr_b.primary().as_str(), key_b);

    let ctx = kctx("users", Some("acme"), 1);
    let g = kr_a.generate(&ctx).await.expect("generate");
    assert_eq!(g.wrapped[0].master_key.as_str(), key_a);
    let back = kr_a.unwrap(&ctx, &g.wrapped).await.expect("right context");
    assert_eq!(back.expose(), g.material.expose());

    // Any other context: scope, key id, tenant, tenant missing.
    for bad in [
        kctx("orders", Some("acme"), 1),
        kctx("users", Some("acme"), 2),
        kctx("users", Some("other"), 1),
        kctx("users", None, 1),
    ] {
        let e = kr_a.unwrap(&bad, &g.wrapped).await.unwrap_err();
        assert_eq!(refused(&e), KeyringErrorKind::InvalidCiphertext, "{bad:?}");
        assert!(!e.is_retryable());
    }

    // Wrong key: keyring B does not claim A's blob and makes no call.
    assert!(!kr_b.can_unwrap(&g.wrapped[0].master_key));
    let e = kr_b.unwrap(&ctx, &g.wrapped).await.unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::NoUsableWrappedKey);
    assert_eq!(kr_b.metrics().decrypt_calls, 0);
    // A blob relabelled as B's: Decrypt is pinned to B, and KMS refuses.
    let relabelled = WrappedKey {
        master_key: MasterKeyId::new(&key_b),
        blob: g.wrapped[0].blob.clone(),
    };
    let e = kr_b.unwrap(&ctx, &[relabelled]).await.unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::AccessDenied, "{e}");
    assert_eq!(kr_b.metrics().decrypt_calls, 1);
}

#[tokio::test]
async fn encrypt_adds_wrapping_keys_and_reencrypt_rotates_the_master_key() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key_a = moto.create_key(&client).await;
    let key_b = moto.create_key(&client).await;
    let ctx = kctx("users", None, 42);

    // Two wrapping keys: GenerateDataKey under A, Encrypt under B.
    let both = KmsKeyring::builder()
        .client(client.clone())
        .key(&key_a)
        .key(&key_b)
        .build()
        .await
        .unwrap();
    let g = both.generate(&ctx).await.unwrap();
    let masters: Vec<&str> = g.wrapped.iter().map(|w| w.master_key.as_str()).collect();
    assert_eq!(masters, [key_a.as_str(), key_b.as_str()]);
    let m = both.metrics();
    assert_eq!((m.generate_data_key_calls, m.encrypt_calls), (1, 1));
    let only_b = keyring(&client, &key_b).await;
    let back = only_b.unwrap(&ctx, &g.wrapped[1..]).await.unwrap();
    assert_eq!(back.expose(), g.material.expose());

    // Master-key rotation A -> B inside KMS (ReEncrypt), old key unwrap-only.
    let kr_a = keyring(&client, &key_a).await;
    let g = kr_a.generate(&ctx).await.unwrap();
    let rotating = KmsKeyring::builder()
        .client(client.clone())
        .key(&key_b)
        .unwrap_only_key(&key_a)
        .build()
        .await
        .unwrap();
    assert!(rotating.can_unwrap(&MasterKeyId::new(&key_a)));
    let moved = rotating
        .rewrap(&ctx, &g.wrapped[0], &MasterKeyId::new(&key_b))
        .await
        .expect("ReEncrypt");
    assert_eq!(moved.master_key.as_str(), key_b);
    assert_ne!(moved.blob, g.wrapped[0].blob);
    let r = rotating.metrics();
    assert_eq!(
        (r.re_encrypt_calls, r.decrypt_calls, r.encrypt_calls),
        (1, 0, 0)
    );
    let back = only_b
        .unwrap(&ctx, std::slice::from_ref(&moved))
        .await
        .unwrap();
    assert_eq!(back.expose(), g.material.expose());
    // The destination context is the same context: another one does not open it.
    let e = only_b
        .unwrap(&kctx("users", None, 43), &[moved])
        .await
        .unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::InvalidCiphertext);
}
