//! Known-answer vectors for value format v1: fixed key, nonce and context give
//! exactly these bytes. The associated data is written out by hand here and the
//! expected ciphertext is recomputed with raw `aes-gcm`, so the vectors do not
//! depend on the code they check. If one of these fails, the format drifted:
//! stored data would no longer decrypt.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use proptest::prelude::*;
use sqlx_envelope::format::{self, OVERHEAD};
use sqlx_envelope::{Context, DataKey, Error, KeyId, KeyMaterial, MalformedReason, PkPart, RowId};

const KEY: [u8; 32] = [0x42; 32];
const NONCE: [u8; 12] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
];

fn key(id: u64) -> DataKey {
    DataKey::new(KeyId::new(id), &KeyMaterial::new(KEY))
}

fn raw_seal(aad: &[u8], pt: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(&KEY.into())
        .encrypt(&Nonce::from(NONCE), Payload { msg: pt, aad })
        .unwrap()
}

/// users.email, row 42 (integer), no tenant, key 7.
const AAD_SIMPLE: &str = concat!(
    "73716c782d656e76656c6f70652f76616c7565", // "sqlx-envelope/value"
    "01",                                     // version
    "0000000000000007",                       // key id
    "00000005",
    "7573657273", // lp("users")
    "00000005",
    "656d61696c", // lp("email")
    "0001",       // one pk part
    "01",
    "00000008",
    "000000000000002a", // int 42
    "00",               // no tenant
);

/// orders.note, composite key (uuid 00..0f, text "eu"), tenant "acme", key 258.
const AAD_COMPOSITE: &str = concat!(
    "73716c782d656e76656c6f70652f76616c7565",
    "01",
    "0000000000000102",
    "00000006",
    "6f7264657273",
    "00000004",
    "6e6f7465",
    "0002",
    "02",
    "00000010",
    "000102030405060708090a0b0c0d0e0f",
    "03",
    "00000002",
    "6575",
    "01",
    "00000004",
    "61636d65",
);

#[test]
fn aad_is_byte_exact() {
    let row = RowId::from(42_i64);
    let mut aad = Vec::new();
    format::write_aad(
        &mut aad,
        1,
        KeyId::new(7),
        &Context::new("users", "email", &row),
    );
    assert_eq!(hex::encode(&aad), AAD_SIMPLE);

    let uuid: [u8; 16] = core::array::from_fn(|i| i as u8);
    let row = RowId::composite([PkPart::Uuid(uuid), PkPart::from("eu")]);
    let ctx = Context::new("orders", "note", &row).with_tenant("acme");
    format::write_aad(&mut aad, 1, KeyId::new(258), &ctx);
    assert_eq!(hex::encode(&aad), AAD_COMPOSITE);
}

#[test]
fn value_vectors() {
    let row = RowId::from(42_i64);
    let ctx = Context::new("users", "email", &row);
    let v = format::seal_with_nonce(&key(7), &ctx, NONCE, b"ada@example.com");
    let expected_ct = raw_seal(&hex::decode(AAD_SIMPLE).unwrap(), b"ada@example.com");
    let mut expected = hex::decode("010000000000000007112233445566778899aabbcc").unwrap();
    expected.extend_from_slice(&expected_ct);
    assert_eq!(v, expected);
    // Pinned literally too, so a change in aes-gcm itself would also show.
    assert_eq!(
        hex::encode(&v),
        "010000000000000007112233445566778899aabbcc\
         f049f822586387853b4331de25b7ee34383b0ef463419bdf0650ff1d1a42ac",
    );

    // Empty plaintext: header + tag only.
    let v = format::seal_with_nonce(&key(7), &ctx, NONCE, b"");
    assert_eq!(v.len(), OVERHEAD);
    assert_eq!(
        &v[21..],
        &raw_seal(&hex::decode(AAD_SIMPLE).unwrap(), b"")[..]
    );

    let uuid: [u8; 16] = core::array::from_fn(|i| i as u8);
    let row = RowId::composite([PkPart::Uuid(uuid), PkPart::from("eu")]);
    let ctx = Context::new("orders", "note", &row).with_tenant("acme");
    let v = format::seal_with_nonce(&key(258), &ctx, NONCE, &[0u8; 64]);
    assert_eq!(&v[..9], &hex::decode("010000000000000102").unwrap()[..]);
    assert_eq!(
        &v[21..],
        &raw_seal(&hex::decode(AAD_COMPOSITE).unwrap(), &[0u8; 64])[..]
    );
    assert_eq!(v.len(), 64 + OVERHEAD);
}

#[test]
fn overhead_is_37_bytes() {
    assert_eq!(OVERHEAD, 37);
    let row = RowId::from(1_i64);
    let ctx = Context::new("t", "c", &row);
    for n in [0usize, 1, 64, 1000] {
        assert_eq!(format::seal(&key(1), &ctx, &vec![7u8; n]).len(), n + 37);
    }
}

#[test]
fn length_prefixes_and_type_tags_separate_contexts() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let r = RowId::from(1_i64);
    format::write_aad(&mut a, 1, KeyId::new(1), &Context::new("ab", "c", &r));
    format::write_aad(&mut b, 1, KeyId::new(1), &Context::new("a", "bc", &r));
    assert_ne!(a, b);
    let (int, text) = (RowId::from(42_i64), RowId::from("42"));
    format::write_aad(&mut a, 1, KeyId::new(1), &Context::new("t", "c", &int));
    format::write_aad(&mut b, 1, KeyId::new(1), &Context::new("t", "c", &text));
    assert_ne!(a, b);
    // All integer widths canonicalise to i64.
    let (small, big) = (RowId::from(42_i32), RowId::from(42_i64));
    format::write_aad(&mut a, 1, KeyId::new(1), &Context::new("t", "c", &small));
    format::write_aad(&mut b, 1, KeyId::new(1), &Context::new("t", "c", &big));
    assert_eq!(a, b);
    // Composite ("a","b") differs from single "ab" and from ("ab","").
    let c1 = RowId::composite([PkPart::from("a"), PkPart::from("b")]);
    let c2 = RowId::composite([PkPart::from("ab"), PkPart::from("")]);
    format::write_aad(&mut a, 1, KeyId::new(1), &Context::new("t", "c", &c1));
    format::write_aad(&mut b, 1, KeyId::new(1), &Context::new("t", "c", &c2));
    assert_ne!(a, b);
}

#[test]
fn header_errors_are_typed() {
    let m = |r: Result<_, Error>| match r {
        Err(Error::Malformed(reason)) => reason,
        other => panic!("expected Malformed, got {other:?}"),
    };
    assert_eq!(m(format::parse_header(&[])), MalformedReason::Empty);
    assert_eq!(
        m(format::parse_header(&[2; 40])),
        MalformedReason::UnknownVersion(2)
    );
    assert_eq!(
        m(format::parse_header(&[1; 36])),
        MalformedReason::TooShort { len: 36, min: 37 }
    );
    let mut zero_id = vec![0u8; 37];
    zero_id[0] = 1;
    assert_eq!(
        m(format::parse_header(&zero_id)),
        MalformedReason::InvalidKeyId
    );
}

#[test]
fn wrong_key_for_header_is_authentication_error() {
    let row = RowId::from(1_i64);
    let ctx = Context::new("t", "c", &row);
    let v = format::seal(&key(1), &ctx, b"x");
    assert!(matches!(
        format::open(&key(2), &ctx, &v),
        Err(Error::Authentication)
    ));
}

proptest! {
    #[test]
    fn roundtrip_and_every_flip_fails(pt in proptest::collection::vec(any::<u8>(), 0..200),
                                      table in "[a-z]{1,8}", id in any::<i64>(), pos in any::<prop::sample::Index>()) {
        let row = RowId::from(id);
        let ctx = Context::new(&table, "c", &row);
        let v = format::seal(&key(9), &ctx, &pt);
        prop_assert_eq!(&format::open(&key(9), &ctx, &v).unwrap()[..], &pt[..]);
        let mut bad = v.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 0x01;
        prop_assert!(format::open(&key(9), &ctx, &bad).is_err());
    }
}
