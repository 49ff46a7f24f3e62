//! KMS error paths moto cannot produce (disabled key, pending deletion,
//! throttling, multi-region keys), through the real SDK client with
//! aws-smithy-mocks answering instead of the network.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::error::ErrorMetadata;
use aws_sdk_kms::operation::decrypt::{DecryptError, DecryptOutput};
use aws_sdk_kms::operation::describe_key::DescribeKeyOutput;
use aws_sdk_kms::operation::generate_data_key::{GenerateDataKeyError, GenerateDataKeyOutput};
use aws_sdk_kms::operation::re_encrypt::ReEncryptOutput;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::error::{
    DisabledException, IncorrectKeyException, InvalidCiphertextException, KmsInternalException,
    KmsInvalidStateException, NotFoundException,
};
use aws_sdk_kms::types::{DataKeySpec, KeyMetadata};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use sqlx_envelope::keyring::kms::{KmsConfig, KmsKeyring};
use sqlx_envelope::{
    Error, KeyContext, KeyId, KeyMaterial, Keyring, KeyringErrorKind, LocalKeyring, MasterKeyId,
    MultiKeyring, WrappedKey,
};

const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const OLD_KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0000abcd-12ab-34cd-56ef-1234567890ab";
const US_MRK: &str = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
const EU_MRK: &str = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
const EU_KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn ctx() -> KeyContext {
    KeyContext {
        kind: sqlx_envelope::key::KeyKind::Data,
        scope: "users".into(),
        tenant: Some("acme".into()),
        key_id: KeyId::new(7),
    }
}

fn meta(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message("mocked")
        .build()
}

/// Whether a request carried exactly the coarse context of `ctx()`.
fn has_ctx(c: Option<&std::collections::HashMap<String, String>>) -> bool {
    let Some(c) = c else { return false };
    let want: std::collections::HashMap<String, String> = ctx()
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    c == &want && !c.contains_key("row")
}

fn fast() -> KmsConfig {
    KmsConfig::default()
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
}

async fn keyring(client: Client, keys: &[&str]) -> KmsKeyring {
    let mut b = KmsKeyring::builder().client(client).config(fast());
    for k in keys {
        b = b.key(*k);
    }
    b.build().await.expect("keyring")
}

fn wrapped(master: &str) -> WrappedKey {
    WrappedKey {
        master_key: MasterKeyId::new(master),
        blob: vec![0xAB; 96],
    }
}

fn decrypt_ok(key: &'static str) -> Rule {
    mock!(Client::decrypt)
        .match_requests(|r| has_ctx(r.encryption_context()))
        .then_output(move || {
            DecryptOutput::builder()
                .key_id(key)
                .plaintext(Blob::new(vec![7u8; 32]))
                .build()
        })
}

fn refused(e: &Error) -> KeyringErrorKind {
    match e {
        Error::Keyring { kind, .. } => *kind,
        other => panic!("expected a keyring refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn generate_sends_aes256_and_coarse_context_and_records_key_arn() {
    let rule = mock!(Client::generate_data_key)
        .match_requests(|r| {
            r.key_id() == Some(KEY)
                && r.key_spec() == Some(&DataKeySpec::Aes256)
                && has_ctx(r.encryption_context())
        })
        .then_output(|| {
            GenerateDataKeyOutput::builder()
                .key_id(KEY)
                .plaintext(Blob::new(vec![9u8; 32]))
                .ciphertext_blob(Blob::new(vec![1u8; 170]))
                .build()
        });
    let kr = keyring(
        mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
        &[KEY],
    )
    .await;
    let g = kr.generate(&ctx()).await.expect("generate");
    assert_eq!(g.material.expose(), &[9u8; 32]);
    assert_eq!(g.wrapped.len(), 1);
    assert_eq!(g.wrapped[0].master_key.as_str(), KEY);
    assert_eq!(g.wrapped[0].blob.len(), 170);
    assert_eq!(rule.num_calls(), 1);
    let m = kr.metrics();
    assert_eq!(
        (m.generate_data_key_calls, m.describe_key_calls, m.failures),
        (1, 0, 0)
    );
    // Nothing secret in Debug output.
    let dbg = format!("{g:?} {kr:?}");
    assert!(
        dbg.contains("redacted") && !dbg.contains("9, 9, 9"),
        "{dbg}"
    );
}

#[tokio::test]
async fn aliases_resolve_once_through_describe_key() {
    let describe = mock!(Client::describe_key)
        .match_requests(|r| r.key_id() == Some("alias/app"))
        .then_output(|| {
            DescribeKeyOutput::builder()
                .key_metadata(
                    KeyMetadata::builder()
                        .key_id("1234abcd-12ab-34cd-56ef-1234567890ab")
                        .arn(KEY)
                        .build()
                        .unwrap(),
                )
                .build()
        });
    let generate = mock!(Client::generate_data_key)
        .match_requests(|r| r.key_id() == Some(KEY))
        .then_output(|| {
            GenerateDataKeyOutput::builder()
                .key_id(KEY)
                .plaintext(Blob::new(vec![9u8; 32]))
                .ciphertext_blob(Blob::new(vec![1u8; 170]))
                .build()
        });
    let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&describe, &generate]);
    let kr = keyring(client, &["alias/app"]).await;
    assert_eq!(kr.primary().as_str(), KEY, "resolved at build");
    assert!(kr.can_unwrap(&MasterKeyId::new(KEY)));
    assert!(!kr.can_unwrap(&MasterKeyId::new(OLD_KEY)));
    assert!(
        !kr.can_unwrap(&MasterKeyId::new(EU_KEY)),
        "single-region key of another region"
    );
    for _ in 0..3 {
        kr.generate(&ctx()).await.expect("generate");
    }
    assert_eq!(describe.num_calls(), 1, "DescribeKey result is cached");
    assert_eq!(generate.num_calls(), 3);
}

#[tokio::test]
async fn disabled_key_is_key_disabled_and_not_retried() {
    let rule = mock!(Client::generate_data_key).then_error(|| {
        GenerateDataKeyError::DisabledException(
            DisabledException::builder()
                .meta(meta("DisabledException"))
                .build(),
        )
    });
    let kr = keyring(
        mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
        &[KEY],
    )
    .await;
    let e = kr.generate(&ctx()).await.unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::KeyDisabled);
    assert!(!e.is_retryable());
    assert_eq!(rule.num_calls(), 1, "refusals are not retried");
    assert_eq!(kr.metrics().failures, 1);
}

#[tokio::test]
async fn decrypt_refusals_map_to_typed_kinds() {
    type Make = fn() -> DecryptError;
    let cases: [(Make, KeyringErrorKind); 6] = [
        (
            || {
                DecryptError::KmsInvalidStateException(
                    KmsInvalidStateException::builder()
                        .meta(meta("KMSInvalidStateException"))
                        .build(),
                )
            },
            KeyringErrorKind::KeyDisabled, // pending deletion
        ),
        (
            || {
                DecryptError::DisabledException(
                    DisabledException::builder()
                        .meta(meta("DisabledException"))
                        .build(),
                )
            },
            KeyringErrorKind::KeyDisabled,
        ),
        (
            || {
                DecryptError::NotFoundException(
                    NotFoundException::builder()
                        .meta(meta("NotFoundException"))
                        .build(),
                )
            },
            KeyringErrorKind::KeyNotFound,
        ),
        (
            || {
                DecryptError::IncorrectKeyException(
                    IncorrectKeyException::builder()
                        .meta(meta("IncorrectKeyException"))
                        .build(),
                )
            },
            KeyringErrorKind::AccessDenied,
        ),
        (
            || DecryptError::generic(meta("AccessDeniedException")),
            KeyringErrorKind::AccessDenied,
        ),
        (
            || {
                DecryptError::InvalidCiphertextException(
                    InvalidCiphertextException::builder()
                        .meta(meta("InvalidCiphertextException"))
                        .build(),
                )
            },
            KeyringErrorKind::InvalidCiphertext,
        ),
    ];
    for (make, want) in cases {
        let rule = mock!(Client::decrypt).then_error(make);
        let kr = keyring(
            mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
            &[KEY],
        )
        .await;
        let e = kr.unwrap(&ctx(), &[wrapped(KEY)]).await.unwrap_err();
        assert_eq!(refused(&e), want, "{e}");
        assert!(!e.is_retryable());
        assert_eq!(rule.num_calls(), 1);
        // The error names the master key, never material.
        assert!(e.to_string().contains(KEY), "{e}");
    }
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_then_succeeds() {
    let rule = mock!(Client::decrypt)
        .sequence()
        .error(|| DecryptError::generic(meta("ThrottlingException")))
        .times(2)
        .output(|| {
            DecryptOutput::builder()
                .key_id(KEY)
                .plaintext(Blob::new(vec![7u8; 32]))
                .build()
        })
        .build();
    let kr = keyring(
        mock_client!(aws_sdk_kms, RuleMode::Sequential, [&rule]),
        &[KEY],
    )
    .await;
    let m = kr
        .unwrap(&ctx(), &[wrapped(KEY)])
        .await
        .expect("third attempt succeeds");
    assert_eq!(m.expose(), &[7u8; 32]);
    assert_eq!(rule.num_calls(), 3);
    let s = kr.metrics();
    assert_eq!(
        (s.decrypt_calls, s.throttles, s.retries, s.failures),
        (3, 2, 2, 0)
    );
}

#[tokio::test]
async fn throttling_past_max_attempts_is_typed_throttled() {
    let rule =
        mock!(Client::decrypt).then_error(|| DecryptError::generic(meta("ThrottlingException")));
    let kr = keyring(
        mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
        &[KEY],
    )
    .await;
    let e = kr.unwrap(&ctx(), &[wrapped(KEY)]).await.unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::Throttled);
    assert!(e.is_retryable());
    assert_eq!(rule.num_calls(), 3, "default max_attempts");
    let s = kr.metrics();
    assert_eq!((s.throttles, s.retries, s.failures), (3, 2, 1));
}

#[tokio::test]
async fn kms_internal_errors_are_retried_then_unavailable() {
    let rule = mock!(Client::decrypt).then_error(|| {
        DecryptError::KmsInternalException(
            KmsInternalException::builder()
                .meta(meta("KMSInternalException"))
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let kr = KmsKeyring::builder()
        .client(client)
        .key(KEY)
        .config(fast().max_attempts(2))
        .build()
        .await
        .unwrap();
    let e = kr.unwrap(&ctx(), &[wrapped(KEY)]).await.unwrap_err();
    assert!(matches!(e, Error::KeyringUnavailable { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(rule.num_calls(), 2);
}

#[tokio::test]
async fn mrk_blob_from_another_region_decrypts_through_local_replica() {
    // Only a Decrypt pinned to the local (eu-west-1) replica ARN is answered.
    let rule = mock!(Client::decrypt)
        .match_requests(|r| r.key_id() == Some(EU_MRK) && has_ctx(r.encryption_context()))
        .then_output(|| {
            DecryptOutput::builder()
                .key_id(EU_MRK)
                .plaintext(Blob::new(vec![5u8; 32]))
                .build()
        });
    let kr = keyring(
        mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
        &[EU_MRK],
    )
    .await;
    assert!(kr.can_unwrap(&MasterKeyId::new(US_MRK)));
    assert!(
        !kr.can_unwrap(&MasterKeyId::new(KEY)),
        "not a multi-region key"
    );
    let m = kr
        .unwrap(&ctx(), &[wrapped(US_MRK)])
        .await
        .expect("replica decrypts");
    assert_eq!(m.expose(), &[5u8; 32]);
    assert_eq!(rule.num_calls(), 1);

    // A single-region key of another region is not sent to KMS at all.
    let e = kr.unwrap(&ctx(), &[wrapped(KEY)]).await.unwrap_err();
    assert_eq!(refused(&e), KeyringErrorKind::NoUsableWrappedKey);
    assert_eq!(kr.metrics().decrypt_calls, 1);
}

#[tokio::test]
async fn mrk_replica_in_a_multi_keyring_with_local_break_glass() {
    let rule = decrypt_ok(EU_MRK);
    let kms: Arc<dyn Keyring> = Arc::new(
        keyring(
            mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]),
            &[EU_MRK],
        )
        .await,
    );
    let local = LocalKeyring::new("breakglass/1", KeyMaterial::generate()).unwrap();
    let local_blob = local
        .wrap(&ctx(), &KeyMaterial::new([5u8; 32]))
        .await
        .unwrap();
    let multi = MultiKeyring::new(vec![kms, Arc::new(local)]).unwrap();
    let mut blobs = vec![wrapped(US_MRK)];
    blobs.extend(local_blob.clone());
    let m = multi
        .unwrap(&ctx(), &blobs)
        .await
        .expect("through the mrk replica");
    assert_eq!(
        m.expose(),
        &[7u8; 32],
        "KMS answered, not the break-glass key"
    );
    assert_eq!((rule.num_calls(), multi.failovers()), (1, 0));

    // KMS refuses: the local break-glass key answers, counted as a failover.
    let denied =
        mock!(Client::decrypt).then_error(|| DecryptError::generic(meta("AccessDeniedException")));
    let kms: Arc<dyn Keyring> = Arc::new(
        keyring(
            mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&denied]),
            &[EU_MRK],
        )
        .await,
    );
    let local = LocalKeyring::new("breakglass/1", KeyMaterial::generate()).unwrap();
    let local_blob = local
        .wrap(&ctx(), &KeyMaterial::new([5u8; 32]))
        .await
        .unwrap();
    let multi = MultiKeyring::new(vec![kms, Arc::new(local)]).unwrap();
    let mut blobs = vec![wrapped(US_MRK)];
    blobs.extend(local_blob);
    let m = multi.unwrap(&ctx(), &blobs).await.expect("break-glass");
    assert_eq!(m.expose(), &[5u8; 32]);
    assert_eq!((denied.num_calls(), multi.failovers()), (1, 1));
}

#[tokio::test]
async fn rewrap_uses_reencrypt_with_the_same_context() {
    let rule = mock!(Client::re_encrypt)
        .match_requests(|r| {
            r.source_key_id() == Some(OLD_KEY)
                && r.destination_key_id() == Some(KEY)
                && has_ctx(r.source_encryption_context())
                && has_ctx(r.destination_encryption_context())
        })
        .then_output(|| {
            ReEncryptOutput::builder()
                .key_id(KEY)
                .source_key_id(OLD_KEY)
                .ciphertext_blob(Blob::new(vec![3u8; 180]))
                .build()
        });
    let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let kr = KmsKeyring::builder()
        .client(client)
        .key(KEY)
        .unwrap_only_key(OLD_KEY)
        .config(fast())
        .build()
        .await
        .unwrap();
    assert_eq!(kr.master_keys(), vec![MasterKeyId::new(KEY)]);
    assert!(kr.can_unwrap(&MasterKeyId::new(OLD_KEY)));
    let w = kr
        .rewrap(&ctx(), &wrapped(OLD_KEY), &MasterKeyId::new(KEY))
        .await
        .expect("ReEncrypt");
    assert_eq!(w.master_key.as_str(), KEY);
    assert_eq!(w.blob, vec![3u8; 180]);
    let m = kr.metrics();
    assert_eq!(
        (
            rule.num_calls(),
            m.re_encrypt_calls,
            m.decrypt_calls,
            m.encrypt_calls
        ),
        (1, 1, 0, 0)
    );
    // A target outside the keyring is a configuration error, before any call.
    let e = kr
        .rewrap(&ctx(), &wrapped(OLD_KEY), &MasterKeyId::new(EU_KEY))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert_eq!(kr.metrics().re_encrypt_calls, 1);
}

#[tokio::test]
async fn building_without_keys_or_with_bad_config_fails() {
    let rule = decrypt_ok(KEY);
    let e = KmsKeyring::builder()
        .client(mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
    let e = KmsKeyring::builder()
        .client(mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]))
        .key(KEY)
        .config(KmsConfig::default().max_attempts(0))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
}
