//! The audit trail: every KMS request emits one `tracing` event with the
//! operation, key ARN, region, encryption context, latency and outcome, and
//! never key material. Alone in its test binary, so no other test races the
//! tracing callsite registration.
#![cfg(feature = "aws-kms")]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sqlx_envelope::keyring::kms::KmsKeyring;
use sqlx_envelope::{KeyContext, KeyId, Keyring};
use support::moto::Moto;

fn kctx(scope: &str, tenant: Option<&str>, id: u64) -> KeyContext {
    KeyContext {
        kind: sqlx_envelope::key::KeyKind::Data,
        scope: scope.into(),
        tenant: tenant.map(Into::into),
        key_id: KeyId::new(id),
    }
}

async fn keyring(client: &aws_sdk_kms::Client, key: &str) -> KmsKeyring {
    KmsKeyring::builder()
        .client(client.clone())
        .key(key)
        .build()
        .await
        .expect("keyring")
}

/// Collects the fields of every `sqlx_envelope::kms` event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

/// The (name, value) pairs of one event.
type Fields = Vec<(String, String)>;

struct Visitor<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == "sqlx_envelope::kms" {
            let mut fields = Vec::new();
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn every_kms_call_emits_an_audit_event_without_key_material() {
    let moto = Moto::start();
    let client = moto.client("us-east-1");
    let key = moto.create_key(&client).await;
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let kr = keyring(&client, &key).await;
    let ctx = kctx("users", Some("acme"), 9);
    let g = kr.generate(&ctx).await.unwrap();
    kr.unwrap(&ctx, &g.wrapped).await.unwrap();
    let _ = kr
        .unwrap(&kctx("users", None, 9), &g.wrapped)
        .await
        .unwrap_err();

    let events = capture.0.lock().unwrap().clone();
    assert_eq!(
        events.len() as u64,
        kr.metrics().total_calls(),
        "{events:?}"
    );
    assert_eq!(events.len(), 3);
    let field = |ev: &Vec<(String, String)>, name: &str| {
        ev.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("event lacks {name}: {ev:?}"))
    };
    let ops: Vec<String> = events.iter().map(|e| field(e, "operation")).collect();
    assert_eq!(ops, ["GenerateDataKey", "Decrypt", "Decrypt"]);
    let outcomes: HashSet<String> = events.iter().map(|e| field(e, "outcome")).collect();
    assert!(outcomes.contains("ok") && outcomes.contains("InvalidCiphertextException"));
    for ev in &events {
        assert_eq!(field(ev, "key_arn"), key);
        assert_eq!(field(ev, "region"), "us-east-1");
        field(ev, "latency_ms");
    }
    assert_eq!(
        field(&events[0], "encryption_context"),
        "purpose=sqlx-envelope/data-key,scope=users,key_id=9,tenant=acme"
    );
    // No representation of the key material in any field.
    let material = g.material.expose();
    let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
    let dbg = format!("{material:?}");
    let all = format!("{events:?}");
    assert!(!all.contains(&hex) && !all.contains(&dbg[1..dbg.len() - 1]));
}
