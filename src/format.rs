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
//! The known-answer vectors in `checks/tests/format_vectors.rs` pin this layout.

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

/// Columns per data key whose associated-data prefix the key keeps hashed
/// ([`ColumnPrefix`]): the first this many columns a key seals or opens
/// values of, for the key's life (a key usually serves one column, or the
/// few of one table); values of any further column hash their whole
/// associated data. A prefix takes about 250 bytes (four 16-byte POLYVAL
/// accumulators, the shared bytes and the names), an unused slot 16 (a
/// pointer and its `OnceLock` state).
pub(crate) const COLUMN_PREFIXES: usize = 8;

/// The part of the associated data every value of one column shares under
/// one data key (domain, version, key id, table, column), hashed once under
/// that key ([`crate::gcm::AadPrefix`]) and kept in the key
/// ([`DataKey::column_prefixes`]): a value then writes and hashes only its
/// own part (primary key and tenant).
pub(crate) struct ColumnPrefix {
    table: Box<str>,
    column: Box<str>,
    prefix: crate::gcm::AadPrefix,
}

/// The hashed prefix `key` keeps for the column of `ctx`: found, or made now
/// in the first free slot (another thread may fill that slot first, with its
/// own column: the search goes on); `None` when the key's slots all hold
/// other columns. After a column's first value this reads atomics and
/// compares names, nothing else.
fn column_prefix<'k>(key: &'k DataKey, ctx: &Context<'_>) -> Option<&'k crate::gcm::AadPrefix> {
    let is_ours = |c: &ColumnPrefix| *c.table == *ctx.table && *c.column == *ctx.column;
    for slot in key.column_prefixes() {
        let c = match slot.get() {
            Some(c) => c,
            None => slot.get_or_init(|| {
                let mut shared = Vec::with_capacity(column_aad_len(ctx));
                append_column_aad(&mut shared, VERSION_V1, key.id(), ctx);
                Box::new(ColumnPrefix {
                    table: ctx.table.into(),
                    column: ctx.column.into(),
                    prefix: key.gcm().aad_prefix(&shared),
                })
            }),
        };
        if is_ours(c) {
            return Some(&c.prefix);
        }
    }
    None
}

/// The associated data of a value under `key` at `ctx`, what [`write_aad`]
/// writes: its own part written into `buf` after the column's `prefix`, or
/// all of it without one.
fn value_aad<'a>(
    key: &DataKey,
    prefix: Option<&'a crate::gcm::AadPrefix>,
    ctx: &Context<'_>,
    buf: &'a mut Vec<u8>,
) -> crate::gcm::Aad<'a> {
    buf.clear();
    match prefix {
        Some(p) => {
            append_row_aad(buf, ctx);
            crate::gcm::Aad::split(p, buf)
        }
        None => {
            append_aad(buf, VERSION_V1, key.id(), ctx);
            crate::gcm::Aad::whole(buf)
        }
    }
}

/// Run `f` with the associated data of one value under `key` at `ctx`
/// (from the key's column prefix when it has one), in a per-thread buffer.
fn with_aad<R>(key: &DataKey, ctx: &Context<'_>, f: impl FnOnce(crate::gcm::Aad<'_>) -> R) -> R {
    let prefix = column_prefix(key, ctx);
    AAD_BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => f(value_aad(key, prefix, ctx, &mut buf)),
        Err(_) => f(value_aad(key, prefix, ctx, &mut Vec::new())),
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
    let tag = with_aad(key, ctx, |aad| {
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
    with_aad(key, ctx, |aad| {
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
    with_aad(key, ctx, |aad| {
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

/// Columns a batch remembers the prefix of, per key (past these, a value's
/// column is looked up in the key again).
const RUN_COLUMNS: usize = 16;

/// The associated data of the values of a batch under one key, value by
/// value: each value writes only its own part (primary key and tenant) into
/// one reused buffer and starts from its column's prefix the key keeps
/// ([`column_prefix`]), found once per column of the batch (by the name's
/// address first: one column's contexts usually share one `&'static str`).
/// A value of a column the key keeps no prefix for writes its whole
/// associated data.
#[derive(Default)]
struct RunColumns<'k, 'c> {
    /// The key the values are under (its id is in the prefixes, and its hash
    /// key in their accumulators).
    key: Option<&'k DataKey>,
    columns: Vec<(&'c str, &'c str, Option<&'k crate::gcm::AadPrefix>)>,
    own: Vec<u8>,
}

impl<'k, 'c> RunColumns<'k, 'c> {
    /// Use `key` from now on (the columns found under any other key are
    /// forgotten).
    fn for_key(&mut self, key: &'k DataKey) {
        if !self.key.is_some_and(|k| std::ptr::eq(k, key)) {
            self.key = Some(key);
            self.columns.clear();
        }
    }

    /// The associated data, under the key given to [`RunColumns::for_key`],
    /// of a value stored at `ctx`: what [`write_aad`] writes, split at its
    /// column's share when the key keeps that column's prefix.
    fn aad(&mut self, ctx: &Context<'c>) -> crate::gcm::Aad<'_> {
        let key = self.key.expect("RunColumns::for_key first");
        let seen = self
            .columns
            .iter()
            .find(|(t, c, _)| same_str(t, ctx.table) && same_str(c, ctx.column));
        let prefix = match seen {
            Some(&(_, _, prefix)) => prefix,
            None => {
                let prefix = column_prefix(key, ctx);
                if self.columns.len() < RUN_COLUMNS {
                    self.columns.push((ctx.table, ctx.column, prefix));
                }
                prefix
            }
        };
        value_aad(key, prefix, ctx, &mut self.own)
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
/// block-cipher call (see [`crate::gcm`]); a value alone in its run (longer
/// than a run's 16 KiB of keystream, or the only one under its key there) is
/// opened as a single value is, with no keystream buffer. `ok[i]` tells whether value `i`
/// opened (its tag matched); a value that did not open is left as it was.
pub(crate) fn open_batch<'c>(items: &mut [Opening<'_, 'c>], ok: &mut Vec<bool>) {
    ok.clear();
    let (mut blocks, mut columns) = (crate::gcm::Keystream::default(), RunColumns::default());
    for range in runs(items.iter().map(|i| (i.key.id(), i.ct.len()))) {
        let run = &mut items[range];
        let key = run[0].key;
        let gcm = key.gcm();
        columns.for_key(key);
        if let [one] = run {
            // A value alone in its run (a long one, or the only one under its
            // key) is opened as a single value is: no keystream buffer.
            let aad = columns.aad(one.ctx);
            ok.push(gcm.open(&one.nonce, aad, one.ct, &one.tag).is_ok());
            continue;
        }
        let mut streams = gcm.keystreams(run.iter().map(|i| (&i.nonce, i.ct.len())), &mut blocks);
        let mut hasher = gcm.hasher();
        for item in run.iter_mut() {
            let ks = streams.next();
            let aad = columns.aad(item.ctx);
            ok.push(gcm.open_in_run(&mut hasher, aad, item.ct, &item.tag, ks));
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
/// values go through one block-cipher call (see [`crate::gcm`]), a value alone
/// in its run is sealed as a single value is. The nonces
/// must be fresh (see [`random_nonces`]).
pub(crate) fn seal_batch_into(
    key: &DataKey,
    values: &[(&Context<'_>, &[u8])],
    out: &mut [Vec<u8>],
) {
    assert_eq!(values.len(), out.len(), "one buffer per value");
    let (mut blocks, mut columns) = (crate::gcm::Keystream::default(), RunColumns::default());
    let gcm = key.gcm();
    let mut hasher = gcm.hasher();
    columns.for_key(key);
    for range in runs(values.iter().map(|(_, pt)| (key.id(), pt.len()))) {
        if let ([(ctx, _)], [v]) = (&values[range.clone()], &mut out[range.clone()]) {
            // A value alone in its run (a long one, or the only one) is
            // sealed as a single value is: no keystream buffer.
            let nonce = *nonce_of(v);
            let tag = gcm.seal(&nonce, columns.aad(ctx), &mut v[HEADER_LEN..]);
            v.extend_from_slice(&tag);
            continue;
        }
        let mut streams = gcm.keystreams(
            out[range.clone()]
                .iter()
                .map(|v| (nonce_of(v), v.len() - HEADER_LEN)),
            &mut blocks,
        );
        for ((ctx, _), v) in values[range.clone()].iter().zip(&mut out[range]) {
            let ks = streams.next();
            let aad = columns.aad(ctx);
            let tag = gcm.seal_in_run(&mut hasher, aad, &mut v[HEADER_LEN..], ks);
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
        // (table, column): "c0" in both tables; COLUMN_PREFIXES + 3 in all.
        let columns_order: Vec<(&str, String)> = std::iter::once(("other_table", "c0".to_owned()))
            .chain((0..COLUMN_PREFIXES + 2).map(|i| (["t", "other_table"][i % 2], format!("c{i}"))))
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
            let first = columns_order
                .iter()
                .position(|(t, c)| *t == ctx.table && c == ctx.column)
                .unwrap();
            let prefixed = column_prefix(&key, ctx).is_some();
            assert_eq!(prefixed, first < COLUMN_PREFIXES, "value {i}");
            // A single value's associated data is the same.
            let mut buf = Vec::new();
            assert_eq!(
                value_aad(&key, column_prefix(&key, ctx), ctx, &mut buf).to_vec(),
                want
            );
        }
        // Another key: its own prefixes (its id is in them).
        let other = DataKey::new(KeyId::new(8), &KeyMaterial::generate());
        columns.for_key(&other);
        let mut want = Vec::new();
        write_aad(&mut want, VERSION_V1, other.id(), &ctxs[0]);
        assert_eq!(columns.aad(&ctxs[0]).to_vec(), want);
    }

    /// The same key twice, from one key material: the first with its prefix
    /// slots free, the second with every slot taken by other columns (its
    /// values hash their whole associated data).
    fn twin_keys(id: u64) -> (DataKey, DataKey) {
        let material = KeyMaterial::generate();
        let (prefixed, whole) = (
            DataKey::new(KeyId::new(id), &material),
            DataKey::new(KeyId::new(id), &material),
        );
        let row = RowId::from(0);
        for i in 0..COLUMN_PREFIXES {
            seal(
                &whole,
                &Context::new("filler", &format!("f{i}"), &row),
                b"x",
            );
        }
        (prefixed, whole)
    }

    /// A value sealed from its column's prefix is byte for byte the value
    /// sealed from its whole associated data (twin keys, [`twin_keys`]),
    /// alone and in a batch; each key opens the other's value; a value moved
    /// to another row or tenant fails under both.
    #[test]
    fn prefixed_and_whole_associated_data_seal_alike() {
        let (prefixed, whole) = twin_keys(5);
        let row = RowId::composite([PkPart::Int(9), PkPart::Text("x".into())]);
        let long_table = "t".repeat(70);
        let long = Context::new(&long_table, "a_column_with_a_long_name", &row);
        let ctx = Context::new("customers", "email", &row).with_tenant("acme");
        for c in [&ctx, &long] {
            assert!(column_prefix(&prefixed, c).is_some());
            assert!(column_prefix(&whole, c).is_none());
        }
        for len in [0, 1, 15, 16, 17, 64, 100, 300] {
            let pt = vec![7u8; len];
            let nonce = random_nonce();
            let a = seal_with_nonce(&prefixed, &long, nonce, &pt);
            assert_eq!(
                a,
                seal_with_nonce(&whole, &long, nonce, &pt),
                "long names, {len} bytes"
            );
            assert_eq!(&open(&whole, &long, &a).unwrap()[..], &pt[..]);
        }
        // A batch under the prefixed key, against each value alone under the
        // whole one.
        let pts: Vec<Vec<u8>> = [0, 1, 16, 17, 64, 300].map(|n| vec![3u8; n]).into();
        let items: Vec<(&Context<'_>, &[u8])> = pts
            .iter()
            .enumerate()
            .map(|(i, pt)| ([&ctx, &long][i % 2], &pt[..]))
            .collect();
        let nonces = random_nonces(items.len());
        let mut batch = seal_buffers(&prefixed, &items, &nonces);
        seal_batch_into(&prefixed, &items, &mut batch);
        for (((c, pt), nonce), sealed) in items.iter().zip(&nonces).zip(&batch) {
            assert_eq!(&seal_with_nonce(&whole, c, *nonce, pt), sealed);
        }
        for len in [0, 1, 15, 16, 17, 64, 100, 300] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let nonce = random_nonce();
            let a = seal_with_nonce(&prefixed, &ctx, nonce, &pt);
            assert_eq!(a, seal_with_nonce(&whole, &ctx, nonce, &pt), "{len} bytes");
            assert_eq!(&open(&whole, &ctx, &a).unwrap()[..], &pt[..]);
            assert_eq!(&open(&prefixed, &ctx, &a).unwrap()[..], &pt[..]);
            let other_row = RowId::composite([PkPart::Int(9), PkPart::Text("y".into())]);
            let moved = Context::new("customers", "email", &other_row).with_tenant("acme");
            let untenanted = Context::new("customers", "email", &row);
            for key in [&prefixed, &whole] {
                assert!(matches!(open(key, &moved, &a), Err(Error::Authentication)));
                assert!(matches!(
                    open(key, &untenanted, &a),
                    Err(Error::Authentication)
                ));
            }
        }
    }

    /// Threads racing to give a fresh key its first columns (two threads
    /// per column, names built apart so no two share an address) leave each
    /// column in one slot, and every value they seal is the value sealed from
    /// the whole associated data; names that join to the same bytes
    /// (`("ab", "c")`, `("a", "bc")`) are two columns.
    #[test]
    fn racing_first_uses_give_each_column_one_prefix() {
        let (prefixed, whole) = twin_keys(6);
        let row = RowId::from(42);
        let mut names: Vec<(String, String)> = (0..COLUMN_PREFIXES - 2)
            .flat_map(|i| [0, 1].map(|_| ("t".to_owned(), format!("c{i}"))))
            .collect();
        names.push(("ab".into(), "c".into()));
        names.push(("a".into(), "bc".into()));
        let barrier = std::sync::Barrier::new(names.len());
        std::thread::scope(|s| {
            for (table, column) in &names {
                let (prefixed, whole, row, barrier) = (&prefixed, &whole, &row, &barrier);
                s.spawn(move || {
                    let ctx = Context::new(table, column, row);
                    let nonce = random_nonce();
                    barrier.wait();
                    let a = seal_with_nonce(prefixed, &ctx, nonce, b"a secret of 21 bytes!");
                    assert_eq!(
                        a,
                        seal_with_nonce(whole, &ctx, nonce, b"a secret of 21 bytes!")
                    );
                });
            }
        });
        let mut held: Vec<(String, String)> = prefixed
            .column_prefixes()
            .iter()
            .filter_map(|slot| slot.get())
            .map(|c| (c.table.to_string(), c.column.to_string()))
            .collect();
        held.sort();
        let mut want = names.clone();
        want.sort();
        want.dedup();
        assert_eq!(held, want, "each column once");
        let ab = Context::new("ab", "c", &row);
        let a = seal(&prefixed, &ab, b"joined names");
        let bc = Context::new("a", "bc", &row);
        assert!(matches!(
            open(&prefixed, &bc, &a),
            Err(Error::Authentication)
        ));
        assert_eq!(&open(&whole, &ab, &a).unwrap()[..], b"joined names");
    }

    /// A batch whose values alternate keys (A, B, A) over more columns than a
    /// key keeps prefixes for, with values long enough to cut runs, seals
    /// byte for byte what sealing each value alone gives and opens value by
    /// value; a tampered value, short or long, fails alone and is left as it
    /// was.
    #[test]
    fn batches_across_keys_and_columns_match_one_by_one() {
        let keys = [
            DataKey::new(KeyId::new(1), &KeyMaterial::generate()),
            DataKey::new(KeyId::new(2), &KeyMaterial::generate()),
        ];
        let rows: Vec<RowId> = (0..4)
            .map(|i| RowId::composite([PkPart::Int(i), PkPart::Text(format!("r{i}"))]))
            .collect();
        let names: Vec<String> = (0..COLUMN_PREFIXES + 3).map(|i| format!("c{i}")).collect();
        // (key, context, plaintext), in batch order: key A, then B, then A.
        let mut values = Vec::new();
        for (segment, k) in [0usize, 1, 0].into_iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                for (c, name) in names.iter().enumerate() {
                    let ctx = Context::new("t", name, row);
                    let ctx = if (r + c) % 2 == 0 {
                        ctx.with_tenant("acme")
                    } else {
                        ctx
                    };
                    // Mostly short; some past a run's 16 KiB of keystream.
                    let len = if (segment + r + c) % 17 == 0 {
                        RUN_BLOCKS * 16 + 5
                    } else {
                        (r * 31 + c * 7) % 130
                    };
                    let mut pt = vec![0u8; len];
                    rand::fill(&mut pt[..]);
                    values.push((k, ctx, pt));
                }
            }
        }
        // Seal each segment as a batch under its key, and each value alone.
        let mut sealed: Vec<Vec<u8>> = Vec::new();
        let mut start = 0;
        while start < values.len() {
            let k = values[start].0;
            let end = (start..values.len())
                .find(|&i| values[i].0 != k)
                .unwrap_or(values.len());
            let part: Vec<(&Context<'_>, &[u8])> = values[start..end]
                .iter()
                .map(|(_, ctx, pt)| (ctx, &pt[..]))
                .collect();
            let nonces = random_nonces(part.len());
            let mut out = seal_buffers(&keys[k], &part, &nonces);
            seal_batch_into(&keys[k], &part, &mut out);
            for ((ctx, pt), (nonce, batch)) in part.iter().zip(nonces.iter().zip(&out)) {
                assert_eq!(&seal_with_nonce(&keys[k], ctx, *nonce, pt), batch);
            }
            sealed.extend(out);
            start = end;
        }
        // Open the whole batch at once, keys mixed; one short value and one
        // long one (a run of its own) tampered.
        let long = (0..values.len())
            .find(|&i| values[i].2.len() > RUN_BLOCKS * 16)
            .expect("a long value");
        let short = (values.len() / 2..values.len())
            .find(|&i| !values[i].2.is_empty() && values[i].2.len() < 100)
            .expect("short values");
        let broken = [short, long];
        for &i in &broken {
            let at = sealed[i].len() - TAG_LEN - 1;
            sealed[i][at] ^= 1;
        }
        let before: Vec<Vec<u8>> = broken.iter().map(|&i| sealed[i].clone()).collect();
        let mut bufs = sealed.clone();
        let mut items: Vec<Opening<'_, '_>> = bufs
            .iter_mut()
            .zip(&values)
            .map(|(buf, (k, ctx, _))| {
                let header = parse_header(buf).unwrap();
                let ct_end = buf.len() - TAG_LEN;
                let (head, tag) = buf.split_at_mut(ct_end);
                Opening {
                    key: &keys[*k],
                    ctx,
                    nonce: header.nonce,
                    ct: &mut head[HEADER_LEN..],
                    tag: (&*tag).try_into().unwrap(),
                }
            })
            .collect();
        let mut ok = Vec::new();
        open_batch(&mut items, &mut ok);
        drop(items);
        assert_eq!(ok.len(), values.len());
        for (i, ((buf, (_, _, pt)), ok)) in bufs.iter().zip(&values).zip(&ok).enumerate() {
            if let Some(b) = broken.iter().position(|&at| at == i) {
                assert!(!ok, "the tampered value {i} fails");
                assert_eq!(buf, &before[b], "and is left as it was");
            } else {
                assert!(ok, "value {i}");
                assert_eq!(&buf[HEADER_LEN..buf.len() - TAG_LEN], &pt[..], "value {i}");
            }
        }
    }
}
