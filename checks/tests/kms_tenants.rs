//! Bring your own key: tenants whose branch keys are wrapped only by their own
//! KMS keys (two keys on the local KMS endpoint), and a tenant whose key is
//! disabled (through the SDK's mock: the local endpoint cannot disable keys),
//! failing that tenant alone with a typed error that names it.

#[path = "../../tests/support/mod.rs"]
mod support;

use aws_sdk_kms::Client;
use aws_sdk_kms::error::ErrorMetadata;
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::operation::generate_data_key::GenerateDataKeyOutput;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::error::DisabledException;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use sqlx_envelope::keyring::kms::KmsKeyring;
use sqlx_envelope::store::KeyFilter;
use sqlx_envelope::{Context, Envelope, Error, KeyKind, KeyringErrorKind, RowId, Sealed};
use support::moto::Moto;
use support::{Db, Kind, local_keyring, unique};

const DISABLED_KEY: &str =
    "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab";

async fn kms(client: Client, key: &str) -> KmsKeyring {
    KmsKeyring::builder()
        .client(client)
        .key(key)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_is_wrapped_by_its_own_key_and_fails_alone() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let (acme_key, globex_key) = (
        moto.create_key(&client).await,
        moto.create_key(&client).await,
    );
    // The disabled tenant's key works while the values are written...
    let generate = mock!(Client::generate_data_key).then_output(|| {
        GenerateDataKeyOutput::builder()
            .key_id(DISABLED_KEY)
            .plaintext(Blob::new(vec![5u8; 32]))
            .ciphertext_blob(Blob::new(vec![2u8; 170]))
            .build()
    });
    // ...and is disabled by the time a cold process reads them.
    let disabled = mock!(Client::decrypt).then_error(|| {
        DecryptError::DisabledException(
            DisabledException::builder()
                .meta(
                    ErrorMetadata::builder()
                        .code("DisabledException")
                        .message("mocked")
                        .build(),
                )
                .build(),
        )
    });
    let db = Db::connect(Kind::Sqlite).await;
    let default = std::sync::Arc::new(local_keyring());
    let (acme, globex, initech, other) = (
        unique("acme"),
        unique("globex"),
        unique("initech"),
        unique("other"),
    );
    let writer = Envelope::builder()
        .keyring_arc(default.clone())
        .tenant_keyring(&acme, kms(client.clone(), &acme_key).await)
        .tenant_keyring(&globex, kms(client.clone(), &globex_key).await)
        .tenant_keyring(
            &initech,
            kms(
                mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&generate]),
                DISABLED_KEY,
            )
            .await,
        )
        .store_arc(db.key_store())
        .build()
        .unwrap();
    let table = unique("byok");
    let tenants = [&acme, &globex, &initech, &other];
    let mut values: Vec<(String, RowId, Sealed)> = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let row = RowId::from(i as i64);
        let v = writer
            .seal(
                &Context::new(&table, "v", &row).with_tenant(t),
                t.as_bytes(),
            )
            .await
            .unwrap();
        values.push(((*t).clone(), row, v));
    }

    // Each tenant's branch key is wrapped by its own master key only.
    let expect = [
        (&acme, acme_key.clone()),
        (&globex, globex_key.clone()),
        (&initech, DISABLED_KEY.to_owned()),
        (&other, default.primary().to_string()),
    ];
    for (tenant, master) in expect {
        let branches = db
            .key_store()
            .list(&KeyFilter::all().kind(KeyKind::Branch).tenant(Some(tenant)))
            .await
            .unwrap();
        assert_eq!(branches.len(), 1);
        let masters: Vec<_> = branches[0]
            .wrapped
            .iter()
            .map(|w| w.master_key.to_string())
            .collect();
        assert_eq!(masters, vec![master], "{tenant}");
    }

    // A cold process whose view of initech's key is "disabled".
    let reader = Envelope::builder()
        .keyring_arc(default)
        .tenant_keyring(&acme, kms(client.clone(), &acme_key).await)
        .tenant_keyring(&globex, kms(client, &globex_key).await)
        .tenant_keyring(
            &initech,
            kms(
                mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&disabled]),
                DISABLED_KEY,
            )
            .await,
        )
        .store_arc(db.key_store())
        .build()
        .unwrap();
    for (tenant, row, v) in &values {
        let opened = reader
            .open(&Context::new(&table, "v", row).with_tenant(tenant), v)
            .await;
        if *tenant == initech {
            match opened {
                Err(Error::TenantKeyring { tenant: t, source }) => {
                    assert_eq!(&t, tenant);
                    assert!(
                        matches!(
                            *source,
                            Error::Keyring {
                                kind: KeyringErrorKind::KeyDisabled,
                                ..
                            }
                        ),
                        "{source:?}"
                    );
                }
                other => panic!("expected the tenant's typed error, got {other:?}"),
            }
        } else {
            assert_eq!(opened.unwrap().as_bytes(), tenant.as_bytes());
        }
    }
    assert_eq!(disabled.num_calls(), 1, "refusals are not retried");
    // The error message names the tenant, so an operator knows whose key.
    let e = reader
        .open(
            &Context::new(&table, "v", &values[2].1).with_tenant(&initech),
            &values[2].2,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&initech), "{e}");
}
