//! The stored value format, version 1.
//!
//! Every encrypted value is one self-describing byte string:
//!
//! | offset | length | field                                                  |
//! |--------|--------|--------------------------------------------------------|
//! | 0      | 1      | version/suite: `0x01` = v1, AES-256-GCM, random nonce   |
//! | 1      | 8      | data key id, unsigned big-endian                       |
//! | 9      | 12     | nonce (96 bits, random per value)                      |
//! | 21     | n      | AES-256-GCM ciphertext of the n plaintext bytes        |
//! | 21 + n | 16     | GCM authentication tag                                 |
//!
//! Overhead: [`OVERHEAD`] = 37 bytes per value, whatever its length. The key id
//! sits at a fixed offset so a database can find values under a given key
//! without decrypting (`substring(col from 2 for 8)` in PostgreSQL).
//!
//! ## Associated data
//!
//! The AAD is never stored; it is rebuilt from the row on every read:
//!
//! ```text
//! "sqlx-envelope/value"            domain string (19 bytes, no prefix)
//! version                          1 byte, same as offset 0
//! key id                           8 bytes big-endian, same as offset 1
//! lp(table) lp(column)             lp(x) = u32 big-endian length || x
//! u16 big-endian number of primary-key parts, then per part:
//!     tag (1 byte: 1 int, 2 uuid, 3 text, 4 bytes) || lp(canonical bytes)
//!     (ints as i64 big-endian, uuids as 16 bytes, text as UTF-8)
//! tenant: 0x00, or 0x01 || lp(tenant)
//! ```
//!
//! Everything variable is length-prefixed, so `("ab","c")` and `("a","bc")`
//! differ. The version and key id are authenticated: changing either makes the tag
//! fail (unlike Tink, whose key-id prefix is not authenticated).
//!
//! The known-answer vectors in `tests/format_vectors.rs` pin this layout.

use crate::context::Context;
use crate::error::{Error, MalformedReason, Result};
use crate::key::{DataKey, KeyId};

/// Version/suite byte of format v1: AES-256-GCM with a random 96-bit nonce.
pub const VERSION_V1: u8 = 0x01;
/// Length of the key id field.
pub const KEY_ID_LEN: usize = 8;
/// Length of the nonce field.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Offset of the key id in a v1 value.
pub const KEY_ID_OFFSET: usize = 1;
/// Offset of the nonce in a v1 value.
pub const NONCE_OFFSET: usize = KEY_ID_OFFSET + KEY_ID_LEN;
/// Length of everything before the ciphertext.
pub const HEADER_LEN: usize = NONCE_OFFSET + NONCE_LEN;
/// Bytes a v1 value adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Domain separation string at the start of the associated data.
pub const AAD_DOMAIN: &[u8] = b"sqlx-envelope/value";

/// The parsed fixed fields of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The version/suite byte.
    pub version: u8,
    /// The data key the value was sealed under.
    pub key_id: KeyId,
    /// The value's nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// Check the fixed fields of `value` and return them. This does not
/// authenticate anything; only [`open`] does.
pub fn parse_header(value: &[u8]) -> Result<Header> {
    let Some(&version) = value.first() else {
        return Err(Error::Malformed(MalformedReason::Empty));
    };
    if version != VERSION_V1 {
        return Err(Error::Malformed(MalformedReason::UnknownVersion(version)));
    }
    if value.len() < OVERHEAD {
        return Err(Error::Malformed(MalformedReason::TooShort {
            len: value.len(),
            min: OVERHEAD,
        }));
    }
    let id = u64::from_be_bytes(
        value[KEY_ID_OFFSET..NONCE_OFFSET]
            .try_into()
            .expect("8 bytes"),
    );
    if id == 0 {
        return Err(Error::Malformed(MalformedReason::InvalidKeyId));
    }
    let nonce = value[NONCE_OFFSET..HEADER_LEN]
        .try_into()
        .expect("12 bytes");
    Ok(Header {
        version,
        key_id: KeyId::new(id),
        nonce,
    })
}

/// Append `u32 big-endian length || bytes`.
pub(crate) fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("context part longer than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A UUID's 16 bytes as hyphenated lower-case hex (how `uuid::Uuid`
/// displays, and how PostgreSQL renders a `uuid`).
pub(crate) fn uuid_hyphenated(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Lower- or upper-case hex to bytes; `None` on odd length or a non-hex digit.
pub(crate) fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Write the associated data of a value under `key_id` in `ctx` into `out`
/// (cleared first). Public so that other implementations can check their AAD
/// against this one.
pub fn write_aad(out: &mut Vec<u8>, version: u8, key_id: KeyId, ctx: &Context<'_>) {
    out.clear();
    append_aad(out, version, key_id, ctx);
}

/// How many bytes the associated data of a value in `ctx` starts with that
/// every value of its column under one key shares: domain, version, key id,
/// and the length-prefixed table and column names ([`append_aad`]).
fn column_aad_len(ctx: &Context<'_>) -> usize {
    AAD_DOMAIN.len() + 1 + KEY_ID_LEN + 4 + ctx.table.len() + 4 + ctx.column.len()
}

/// [`write_aad`] after what `out` already holds.
fn append_aad(out: &mut Vec<u8>, version: u8, key_id: KeyId, ctx: &Context<'_>) {
    out.reserve(column_aad_len(ctx) + row_aad_len(ctx));
    append_column_aad(out, version, key_id, ctx);
    append_row_aad(out, ctx);
}

/// The part of a value's associated data every value of its column under one
/// key shares ([`column_aad_len`] bytes), after what `out` already holds.
fn append_column_aad(out: &mut Vec<u8>, version: u8, key_id: KeyId, ctx: &Context<'_>) {
    out.extend_from_slice(AAD_DOMAIN);
    out.push(version);
    out.extend_from_slice(&key_id.get().to_be_bytes());
    put_lp(out, ctx.table.as_bytes());
    put_lp(out, ctx.column.as_bytes());
}

/// How many bytes of a value's associated data follow its column's share
/// ([`column_aad_len`]): the primary key and the tenant.
fn row_aad_len(ctx: &Context<'_>) -> usize {
    ctx.row.encoded_len() + 1 + ctx.tenant.map_or(0, |t| 4 + t.len())
}

/// The part of a value's associated data that follows its column's share:
/// the primary key's parts and the tenant.
fn append_row_aad(out: &mut Vec<u8>, ctx: &Context<'_>) {
    let parts = ctx.row.parts();
    let n = u16::try_from(parts.len()).expect("more than 65535 primary key parts");
    out.extend_from_slice(&n.to_be_bytes());
    for p in parts {
        p.write_canonical(out);
    }
    match ctx.tenant {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_lp(out, t.as_bytes());
        }
    }
}

thread_local! {
    static AAD_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_aad<R>(key_id: KeyId, ctx: &Context<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
    AAD_BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => {
            write_aad(&mut buf, VERSION_V1, key_id, ctx);
            f(&buf)
        }
        Err(_) => {
            let mut own = Vec::new();
            write_aad(&mut own, VERSION_V1, key_id, ctx);
            f(&own)
        }
    })
}

/// A fresh random nonce, drawn from the operating system's generator
/// (`getrandom`) for every value. A user-space generator seeded before a
/// `fork()` or a virtual-machine snapshot would hand the same nonces to both
/// copies, and two values under one key with one nonce break AES-GCM; the
/// kernel's generator is reseeded on both. The cost (one system call per value)
/// is measured in the micro benchmark.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::TryRng as _;
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut n)
        .expect("operating system random number generator failed");
    n
}

/// `n` fresh random nonces from one call to the operating system's generator
/// (a batch seal pays one system call, not one per value; the nonces live only
/// in this call's buffer, so a fork cannot hand them to a second process).
pub fn random_nonces(n: usize) -> Vec<[u8; NONCE_LEN]> {
    use rand::TryRng as _;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; n * NONCE_LEN]);
    rand::rngs::SysRng
        .try_fill_bytes(&mut buf)
        .expect("operating system random number generator failed");
    buf.chunks_exact(NONCE_LEN)
        .map(|c| c.try_into().expect("12 bytes"))
        .collect()
}

/// Seal `plaintext` under `key` for `ctx` with the given nonce. The nonce must
/// never repeat under one key; [`seal`] draws a random one. Exposed for
/// known-answer tests.
pub fn seal_with_nonce(
    key: &DataKey,
    ctx: &Context<'_>,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = header_and_plaintext(key, &nonce, plaintext);
    let tag = with_aad(key.id(), ctx, |aad| {
        key.gcm().seal(&nonce, aad, &mut out[HEADER_LEN..])
    });
    out.extend_from_slice(&tag);
    out
}

/// A value's header followed by its plaintext, with room for the tag: the
/// buffer a seal encrypts in place.
fn header_and_plaintext(key: &DataKey, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION_V1);
    out.extend_from_slice(&key.id().get().to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    out
}

/// Move the plaintext of an opened value (decrypted where it lay) to the
/// front of its buffer, wipe the header and tag bytes behind it and shorten
/// the buffer to the plaintext.
pub(crate) fn plaintext_to_front(buf: &mut zeroize::Zeroizing<Vec<u8>>) {
    use zeroize::Zeroize as _;
    let n = buf.len() - OVERHEAD;
    buf.copy_within(HEADER_LEN..HEADER_LEN + n, 0);
    buf[n..].zeroize();
    buf.truncate(n);
}

/// Seal `plaintext` under `key` for `ctx` with a random nonce.
pub fn seal(key: &DataKey, ctx: &Context<'_>, plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(key, ctx, random_nonce(), plaintext)
}

/// Open a stored value in its own buffer: the ciphertext is decrypted where it
/// lies and moved to the front, so no second buffer is allocated and no copy of
/// the plaintext is left behind (the bytes past the plaintext are wiped before
/// the buffer is shortened). `key` must be the key named in the header
/// (checked). On failure the buffer is wiped and dropped.
pub fn open_in_place(
    key: &DataKey,
    ctx: &Context<'_>,
    value: Vec<u8>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let header = parse_header(&value)?;
    open_in_place_parsed(key, &header, ctx, value)
}

/// [`open_in_place`] with the header already parsed from `value`.
pub(crate) fn open_in_place_parsed(
    key: &DataKey,
    header: &Header,
    ctx: &Context<'_>,
    value: Vec<u8>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut buf = zeroize::Zeroizing::new(value);
    if header.key_id != key.id() {
        return Err(Error::Authentication);
    }
    let ct_end = buf.len() - TAG_LEN;
    let tag: [u8; TAG_LEN] = buf[ct_end..].try_into().expect("16 bytes");
    with_aad(key.id(), ctx, |aad| {
        key.gcm()
            .open(&header.nonce, aad, &mut buf[HEADER_LEN..ct_end], &tag)
    })
    .map_err(|_| Error::Authentication)?;
    plaintext_to_front(&mut buf);
    Ok(buf)
}

/// Open a stored value. `key` must be the key named in the header (checked).
/// The plaintext is returned in a buffer that zeroizes on drop.
pub fn open(key: &DataKey, ctx: &Context<'_>, value: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let header = parse_header(value)?;
    open_parsed(key, &header, ctx, value)
}

/// [`open`] with the header already parsed from `value`: the plaintext is
/// decrypted straight into its final (zeroizing) buffer.
pub(crate) fn open_parsed(
    key: &DataKey,
    header: &Header,
    ctx: &Context<'_>,
    value: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if header.key_id != key.id() {
        return Err(Error::Authentication);
    }
    let ct_end = value.len() - TAG_LEN;
    let mut buf = zeroize::Zeroizing::new(value[HEADER_LEN..ct_end].to_vec());
    let tag: [u8; TAG_LEN] = value[ct_end..].try_into().expect("16 bytes");
    with_aad(key.id(), ctx, |aad| {
        key.gcm().open(&header.nonce, aad, buf.as_mut_slice(), &tag)
    })
    .map_err(|_| Error::Authentication)?;
    Ok(buf)
}

/// Most keystream blocks one run of a batch generates at once (16 KiB of
/// scratch space): a batch is cut into runs of about this size.
const RUN_BLOCKS: usize = 1024;

/// One value of a batch: the key named in its header, where it is stored, its
/// nonce, its ciphertext (decrypted in place) and its tag.
pub(crate) struct Opening<'a, 'c> {
    pub key: &'a DataKey,
    pub ctx: &'a Context<'c>,
    pub nonce: [u8; NONCE_LEN],
    pub ct: &'a mut [u8],
    pub tag: [u8; TAG_LEN],
}

/// Cut values (each its key's id and its byte length) into runs under one key
/// of about [`RUN_BLOCKS`] keystream blocks each (a longer value is a run of
/// its own).
fn runs(values: impl Iterator<Item = (KeyId, usize)>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut total, mut end) = (0, 0, 0);
    let mut run_key = None;
    for (i, (key, len)) in values.enumerate() {
        let blocks = len / 16 + 2;
        if i > start && (total + blocks > RUN_BLOCKS || run_key != Some(key)) {
            out.push(start..i);
            (start, total) = (i, 0);
        }
        total += blocks;
        run_key = Some(key);
        end = i + 1;
    }
    if start < end {
        out.push(start..end);
    }
    out
}

/// Columns of a batch under one key whose associated-data prefix is hashed
/// once (a page usually holds a few columns; past these, values hash their
/// whole associated data).
const RUN_PREFIXES: usize = 8;

/// The associated data of the values of a batch under one key, value by
/// value: for each column (up to [`RUN_PREFIXES`]), what all its values share
/// (domain, version, key id, table, column) is hashed once
/// ([`crate::gcm::AadPrefix`]), and a value writes only its own part (primary
/// key and tenant) into one reused buffer. A value of a column past those
/// writes its whole associated data.
#[derive(Default)]
struct RunColumns<'k, 'c> {
    /// The key the prefixes were hashed under (its id is in them, and its
    /// hash key in their states).
    key: Option<&'k DataKey>,
    columns: Vec<(&'c str, &'c str, crate::gcm::AadPrefix)>,
    own: Vec<u8>,
}

impl<'k, 'c> RunColumns<'k, 'c> {
    /// Use `key` from now on (the prefixes of any other key are dropped).
    fn for_key(&mut self, key: &'k DataKey) {
        if !self.key.is_some_and(|k| std::ptr::eq(k, key)) {
            self.key = Some(key);
            self.columns.clear();
        }
    }

    /// The associated data, under the key given to [`RunColumns::for_key`],
    /// of a value stored at `ctx`: what [`write_aad`] writes, split at its
    /// column's share.
    fn aad(&mut self, ctx: &Context<'c>) -> crate::gcm::Aad<'_> {
        let key = self.key.expect("RunColumns::for_key first");
        self.own.clear();
        let found = self
            .columns
            .iter()
            .position(|(t, c, _)| same_str(t, ctx.table) && same_str(c, ctx.column));
        let found = found.or_else(|| {
            (self.columns.len() < RUN_PREFIXES).then(|| {
                append_column_aad(&mut self.own, VERSION_V1, key.id(), ctx);
                let prefix = key.gcm().aad_prefix(&self.own);
                self.own.clear();
                self.columns.push((ctx.table, ctx.column, prefix));
                self.columns.len() - 1
            })
        });
        match found {
            Some(i) => {
                append_row_aad(&mut self.own, ctx);
                crate::gcm::Aad::split(&self.columns[i].2, &self.own)
            }
            None => {
                append_aad(&mut self.own, VERSION_V1, key.id(), ctx);
                crate::gcm::Aad::whole(&self.own)
            }
        }
    }
}

/// Whether two names are equal, at once when they are the same string (the
/// usual case: one column's contexts name it with one `&'static str`).
#[inline]
pub(crate) fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// [`same_str`] for optional names (tenants): both absent, or the same name.
#[inline]
pub(crate) fn same_opt_str(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => same_str(x, y),
        _ => false,
    }
}

/// Open a batch of values in place, each under the key its header names: the
/// counter blocks of each run of values under one key go through one
/// block-cipher call (see [`crate::gcm`]). `ok[i]` tells whether value `i`
/// opened (its tag matched); a value that did not open is left as it was.
pub(crate) fn open_batch<'c>(items: &mut [Opening<'_, 'c>], ok: &mut Vec<bool>) {
    ok.clear();
    let (mut blocks, mut columns) = (crate::gcm::Keystream::default(), RunColumns::default());
    for range in runs(items.iter().map(|i| (i.key.id(), i.ct.len()))) {
        let run = &mut items[range];
        let key = run[0].key;
        let gcm = key.gcm();
        columns.for_key(key);
        let mut streams = gcm.keystreams(run.iter().map(|i| (&i.nonce, i.ct.len())), &mut blocks);
        for item in run.iter_mut() {
            let ks = streams.next();
            let aad = columns.aad(item.ctx);
            ok.push(gcm.open_in_run(aad, item.ct, &item.tag, ks));
        }
    }
}

/// The buffers [`seal_batch_into`] seals in place: each value's header and
/// plaintext, with room for its tag, allocated on the calling thread (the
/// thread that gets the sealed values back).
pub(crate) fn seal_buffers(
    key: &DataKey,
    values: &[(&Context<'_>, &[u8])],
    nonces: &[[u8; NONCE_LEN]],
) -> Vec<Vec<u8>> {
    assert_eq!(values.len(), nonces.len(), "one nonce per value");
    values
        .iter()
        .zip(nonces)
        .map(|((_, pt), nonce)| header_and_plaintext(key, nonce, pt))
        .collect()
}

/// Seal values under `key` in the buffers [`seal_buffers`] made for them (the
/// same `values`, in order), one nonce each: the counter blocks of each run of
/// values go through one block-cipher call (see [`crate::gcm`]). The nonces
/// must be fresh (see [`random_nonces`]).
pub(crate) fn seal_batch_into(
    key: &DataKey,
    values: &[(&Context<'_>, &[u8])],
    out: &mut [Vec<u8>],
) {
    assert_eq!(values.len(), out.len(), "one buffer per value");
    let (mut blocks, mut columns) = (crate::gcm::Keystream::default(), RunColumns::default());
    let gcm = key.gcm();
    columns.for_key(key);
    for range in runs(values.iter().map(|(_, pt)| (key.id(), pt.len()))) {
        let mut streams = gcm.keystreams(
            out[range.clone()]
                .iter()
                .map(|v| (nonce_of(v), v.len() - HEADER_LEN)),
            &mut blocks,
        );
        for ((ctx, _), v) in values[range.clone()].iter().zip(&mut out[range]) {
            let ks = streams.next();
            let aad = columns.aad(ctx);
            let tag = gcm.seal_in_run(aad, &mut v[HEADER_LEN..], ks);
            v.extend_from_slice(&tag);
        }
    }
}

/// The nonce in the header of a buffer [`seal_buffers`] made.
fn nonce_of(value: &[u8]) -> &[u8; NONCE_LEN] {
    value[NONCE_OFFSET..HEADER_LEN]
        .try_into()
        .expect("12 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyMaterial;
    use crate::context::{PkPart, RowId};

    /// A run's associated data is, value by value, what [`write_aad`] gives,
    /// and a value's hashed prefix is its own column's: columns seen again,
    /// one column name in two tables, more columns than a run hashes
    /// prefixes for, a tenant or none, single, composite and text keys.
    #[test]
    fn run_aads_are_each_values_own() {
        let key = DataKey::new(KeyId::new(7), &KeyMaterial::generate());
        let rows = [
            RowId::from(1),
            RowId::composite([PkPart::Int(2), PkPart::Text("b".into())]),
            RowId::from("k"),
        ];
        // (table, column): "c0" in both tables; RUN_PREFIXES + 3 in all.
        let columns_order: Vec<(&str, String)> = std::iter::once(("other_table", "c0".to_owned()))
            .chain((0..RUN_PREFIXES + 2).map(|i| (["t", "other_table"][i % 2], format!("c{i}"))))
            .collect();
        let mut ctxs = Vec::new();
        for round in 0..3 {
            for (i, (table, column)) in columns_order.iter().enumerate() {
                let ctx = Context::new(table, column, &rows[(i + round) % rows.len()]);
                ctxs.push(if (i + round) % 3 == 0 {
                    ctx.with_tenant("acme")
                } else {
                    ctx
                });
            }
        }
        let mut columns = RunColumns::default();
        columns.for_key(&key);
        for (i, ctx) in ctxs.iter().enumerate() {
            let mut want = Vec::new();
            write_aad(&mut want, VERSION_V1, key.id(), ctx);
            let aad = columns.aad(ctx);
            assert_eq!(aad.to_vec(), want, "value {i}");
            let column = columns
                .columns
                .iter()
                .position(|(t, c, _)| *t == ctx.table && *c == ctx.column);
            let first = columns_order
                .iter()
                .position(|(t, c)| *t == ctx.table && c == ctx.column)
                .unwrap();
            assert_eq!(column.is_some(), first < RUN_PREFIXES, "value {i}");
        }
        // Another key: its own prefixes (its id is in them).
        let other = DataKey::new(KeyId::new(8), &KeyMaterial::generate());
        columns.for_key(&other);
        let mut want = Vec::new();
        write_aad(&mut want, VERSION_V1, other.id(), &ctxs[0]);
        assert_eq!(columns.aad(&ctxs[0]).to_vec(), want);
    }
}
