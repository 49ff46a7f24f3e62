//! AES-256-GCM for stored values, composed from RustCrypto's `aes` block
//! cipher, `ctr` mode and `polyval` universal hash: the primitives the
//! `aes-gcm` crate is made of, put together the same way (NIST SP 800-38D, 96-bit nonce, 128-bit
//! tag), so the output is byte for byte what `aes-gcm` produces.
//!
//! Why not call `aes-gcm` for each value: it prepares the block cipher's
//! backend on every call it makes (with VAES-512, broadcasting all fifteen
//! round keys into wide registers), twice per message. For a 64-byte value that
//! set-up costs more than the encryption itself. Here the tag mask and every
//! counter block of a short value (up to 128 bytes) go through one
//! block-cipher call, and a run of values under one key
//! ([`Gcm::keystreams`]) through one call for all of them, so the wide backend
//! works on many blocks at once. A longer value alone goes through CTR mode
//! as `aes-gcm` does it (its set-up is paid once for many blocks).
//!
//! GHASH is computed as POLYVAL over byte-reversed blocks (RFC 8452,
//! appendix A), the way the `ghash` crate does it, but with the blocks of a
//! value reversed into a buffer first (all of them at once for a short value,
//! eight at a time for a long one): the carry-less-multiply backend then takes
//! them four per reduction instead of one call (and one reduction) per block.
//! The associated data every value of a column starts with (domain, version,
//! key id, table, column) is hashed once per column and key
//! ([`Gcm::aad_prefix`], kept with the data key for the first eight columns it
//! serves; values of any further column hash theirs whole); each value, alone
//! or in a run, passes only the rest of its associated data ([`Aad`]) and
//! starts from the hash after as many of the shared blocks as leave its
//! own blocks in whole groups of four (it hashes again the shared blocks it
//! skips fewer of, and the shared part's last partial block with its own
//! bytes). A value names its column's prefix: its associated data is not
//! copied whole, nor compared with the prefix.
//!
//! A prefix keeps POLYVAL's accumulator after its blocks, not a whole hash
//! state: POLYVAL is Horner's rule, `y = (y ^ x) * H` per block, so hashing
//! from an accumulator `y` is hashing from zero with `y` XORed into the first
//! block. A prefix thus hands a value 16 bytes to start from instead of a
//! whole hash state (the key's powers of H, 128 bytes, and the accumulator),
//! and a run of short values is hashed with one such state ([`Hasher`]),
//! taken back to zero after each value by `finalize_reset`. That call copies
//! the state for the value's result (the `universal-hash` crate's default,
//! which `polyval` keeps; the copy is wiped when dropped), but only the
//! accumulator of that copy is read: on the page benchmark a run hashed this
//! way opened in 0.69-0.72x of `aes-gcm`'s time, against 0.77x with a fresh
//! copy of the key's state per value (Intel Xeon, 2026-12-07). A single value,
//! and a long one, hashes with a fresh copy.
//!
//! Tests check this module against `aes-gcm` (every length up to 600 bytes and
//! longer values, both directions, tampering) and against NIST's test vectors;
//! the value format's known-answer vectors pin the stored bytes. Keystream
//! blocks are wiped after use (a batch's buffer once, when it is done, or
//! before it grows; a single short value's stack buffer, and the copy a single
//! value's seal or open keeps of its tag mask, when its tag is done: best
//! effort, registers and temporaries the compiler makes are out of reach).
//! This module does not wipe the keystream of a value longer than 128 bytes
//! sealed or opened alone (or alone in its run of a batch, as a value over 16
//! KiB is): the `ctr` crate XORs it into the value as it makes it, in
//! registers and temporaries of its own it does not wipe, as with `aes-gcm`. The tag is
//! compared in constant time and nothing is decrypted before it matches.

use aes::cipher::{BlockCipherEncrypt, InnerIvInit, KeyInit, StreamCipherCore};
use polyval::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// One AES block.
pub(crate) type Block = aes::Block;

/// Nonce length (96 bits).
pub(crate) const NONCE_LEN: usize = 12;
/// Tag length.
pub(crate) const TAG_LEN: usize = 16;
/// The longest plaintext one nonce can take: 2^32 - 2 blocks.
pub(crate) const P_MAX: u64 = (1 << 36) - 32;
/// Blocks on the stack for a short value (tag mask + 128 bytes); a longer
/// value goes through CTR mode.
const STACK_BLOCKS: usize = 9;

/// An expanded AES-256-GCM key: the block cipher's round keys and the GHASH
/// key, both zeroized on drop.
pub(crate) struct Gcm {
    aes: aes::Aes256,
    /// POLYVAL keyed with `mulX(reverse(H))`: GHASH over reversed blocks.
    polyval: polyval::Polyval,
    /// Tells this key's [`AadPrefix`]es from other keys' (unique in the
    /// process).
    serial: u64,
}

/// The next [`Gcm::serial`].
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The start every value of a column shares in its associated data, its
/// whole blocks already hashed: values of that column start from it instead
/// of hashing those blocks again ([`Aad::split`]). It holds POLYVAL's
/// accumulator after each of its last (up to) four whole blocks: a value
/// skips as many blocks as leave the rest of its blocks in whole groups of
/// four (POLYVAL reduces once per group, and once per block left over), which
/// is always one of the last four, or all of them. A prefix belongs to the key
/// that hashed it: used with another, [`Gcm`] panics rather than compute a tag
/// no one could check. The accumulators depend on the hash key: they are
/// wiped when the prefix is dropped.
#[derive(Clone)]
pub(crate) struct AadPrefix {
    /// The [`Gcm::serial`] of the key that hashed it.
    gcm: u64,
    /// How many whole blocks `states[0]` is the accumulator after.
    first: usize,
    /// `states[i]`: the accumulator after the first `first + i` blocks, up to
    /// all the whole blocks.
    states: Vec<Block>,
    /// The shared bytes, all of them (a partial last block included: a value
    /// hashes it with its own bytes).
    bytes: Vec<u8>,
}

impl AadPrefix {
    /// How many whole blocks the shared bytes have.
    fn whole_blocks(&self) -> usize {
        self.first + self.states.len() - 1
    }

    /// The accumulator after the first `k` blocks (one of the last four
    /// kept).
    fn state(&self, k: usize) -> Block {
        self.states[k - self.first]
    }
}

impl Drop for AadPrefix {
    fn drop(&mut self) {
        wipe(&mut self.states);
    }
}

/// POLYVAL under one key, its accumulator at zero between values: what a run
/// of short values is hashed with, one after the other ([`Gcm::hasher`];
/// wiped when dropped). Used with another key, [`Gcm`] panics.
pub(crate) struct Hasher {
    /// The [`Gcm::serial`] of the key.
    gcm: u64,
    polyval: polyval::Polyval,
}

/// A value's associated data: whole, or a column's [`AadPrefix`] followed by
/// the value's own bytes.
#[derive(Clone, Copy)]
pub(crate) struct Aad<'a> {
    prefix: Option<&'a AadPrefix>,
    rest: &'a [u8],
}

impl<'a> Aad<'a> {
    /// Associated data with nothing hashed beforehand.
    pub fn whole(aad: &'a [u8]) -> Self {
        Aad {
            prefix: None,
            rest: aad,
        }
    }

    /// Associated data that is `prefix`'s bytes followed by `rest`.
    pub fn split(prefix: &'a AadPrefix, rest: &'a [u8]) -> Self {
        Aad {
            prefix: Some(prefix),
            rest,
        }
    }

    /// The bytes hashed before [`Aad::rest`] (none without a prefix).
    fn shared(&self) -> &'a [u8] {
        self.prefix.map_or(&[], |p| &p.bytes)
    }

    /// All of it, in one buffer.
    #[cfg(test)]
    pub fn to_vec(self) -> Vec<u8> {
        [self.shared(), self.rest].concat()
    }
}

/// Scratch space for the keystreams of runs ([`Gcm::keystreams`]): reused
/// from run to run of a batch and wiped, whole capacity, when dropped or
/// before it grows (never freed or moved with keystream in it), rather than
/// after every run.
#[derive(Default)]
pub(crate) struct Keystream(Vec<Block>);

impl Keystream {
    /// The buffer, emptied, with room for `need` blocks. If it must grow, what
    /// it holds is wiped first: growing a vector moves it and frees the old
    /// memory as it is.
    fn clear_for(&mut self, need: usize) -> &mut Vec<Block> {
        if need > self.0.capacity() {
            self.wipe();
            self.0 = Vec::with_capacity(need);
        }
        self.0.clear();
        &mut self.0
    }

    /// Wipe every block the buffer has room for (what earlier, longer runs
    /// left beyond the last run's length included).
    fn wipe(&mut self) {
        let cap = self.0.capacity();
        self.0.resize(cap, Block::default());
        wipe(&mut self.0);
    }
}

impl Drop for Keystream {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// The tag did not match: nothing was decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagMismatch;

/// The keystreams of a run, value after value, in the order
/// [`Gcm::keystreams`] was given the values (it keeps their lengths, so a
/// value can only get its own blocks).
pub(crate) struct Keystreams<'k> {
    blocks: &'k [Block],
    lens: std::vec::IntoIter<usize>,
}

impl<'k> Keystreams<'k> {
    /// The next value's tag mask and counter blocks.
    #[inline]
    pub fn next(&mut self) -> (&'k Block, &'k [Block]) {
        let len = self.lens.next().expect("one keystream per value given");
        let (value, rest) = self.blocks.split_at(len.div_ceil(16) + 1);
        self.blocks = rest;
        value.split_first().expect("mask block")
    }
}

impl Gcm {
    /// Expand `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        let aes = aes::Aes256::new(key.into());
        let mut h = Block::default();
        aes.encrypt_block(&mut h);
        let mut hp = polyval::hazmat::FieldElement::from(h).reverse().mulx();
        h.as_mut_slice().zeroize();
        let mut key = polyval::Key::from(hp);
        let polyval = polyval::Polyval::new(&key);
        hp.zeroize();
        key.as_mut_slice().zeroize();
        let serial = SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Gcm {
            aes,
            polyval,
            serial,
        }
    }

    /// A hash state for a run of values under this key, one after the other
    /// ([`Gcm::seal_in_run`], [`Gcm::open_in_run`]).
    pub fn hasher(&self) -> Hasher {
        Hasher {
            gcm: self.serial,
            polyval: self.polyval.clone(),
        }
    }

    /// Hash the whole blocks of `shared`, the start of the associated data of
    /// every value of a column ([`Aad::split`]).
    pub fn aad_prefix(&self, shared: &[u8]) -> AadPrefix {
        let blocks = shared.len() / 16;
        let first = blocks.saturating_sub(3);
        let mut states = Vec::with_capacity(blocks - first + 1);
        let mut state = self.polyval.clone();
        if first == 0 {
            states.push(Block::default());
        }
        for (i, c) in shared.chunks_exact(16).enumerate() {
            state.update(&[reversed(c.try_into().expect("16 bytes"))]);
            if i + 1 >= first {
                // POLYVAL's value is its accumulator.
                states.push(state.clone().finalize());
            }
        }
        AadPrefix {
            gcm: self.serial,
            first,
            states,
            bytes: shared.to_vec(),
        }
    }

    /// Encrypt `data` in place; returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: Aad<'_>, data: &mut [u8]) -> [u8; TAG_LEN] {
        assert!(data.len() as u64 <= P_MAX, "AES-GCM plaintext too long");
        let mut mask = self.apply_keystream(nonce, data, |_| true);
        let tag = self.tag(None, aad, data, &mask);
        wipe(std::slice::from_mut(&mut mask));
        tag
    }

    /// Check `tag` over `data` (ciphertext) and, only if it matches, decrypt
    /// `data` in place.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        if data.len() as u64 > P_MAX {
            return Err(TagMismatch);
        }
        let mut ok = false;
        let mut mask = self.apply_keystream(nonce, data, |(mask, ct)| {
            ok = tags_equal(&self.tag(None, aad, ct, mask), tag);
            ok
        });
        wipe(std::slice::from_mut(&mut mask));
        if ok { Ok(()) } else { Err(TagMismatch) }
    }

    /// The keystreams of a run of values, each given by its nonce and length:
    /// its tag mask (counter block 1) and its counter blocks from 2, all of
    /// them through one block-cipher call. `buf` is scratch space, reused
    /// across runs (and wiped when dropped).
    pub fn keystreams<'k, 'n>(
        &self,
        values: impl Iterator<Item = (&'n [u8; NONCE_LEN], usize)>,
        buf: &'k mut Keystream,
    ) -> Keystreams<'k> {
        let values: Vec<(&[u8; NONCE_LEN], usize)> = values.collect();
        let need = values.iter().map(|(_, len)| len.div_ceil(16) + 1).sum();
        let buf = buf.clear_for(need);
        let room = buf.as_ptr();
        for (nonce, len) in &values {
            buf.extend(counters(nonce, 1).take(len.div_ceil(16) + 1));
        }
        let lens: Vec<usize> = values.into_iter().map(|(_, len)| len).collect();
        debug_assert_eq!(room, buf.as_ptr(), "a run's keystream never moves");
        self.aes.encrypt_blocks(buf);
        Keystreams {
            blocks: buf,
            lens: lens.into_iter(),
        }
    }

    /// Seal one value of a run in place with its mask and keystream (from
    /// [`Gcm::keystreams`]; a keystream of another length panics), hashed
    /// with the run's `hasher`; returns its tag.
    #[inline]
    pub fn seal_in_run(
        &self,
        hasher: &mut Hasher,
        aad: Aad<'_>,
        data: &mut [u8],
        (mask, ks): (&Block, &[Block]),
    ) -> [u8; TAG_LEN] {
        assert!(data.len() as u64 <= P_MAX, "AES-GCM plaintext too long");
        assert_eq!(ks.len(), data.len().div_ceil(16), "a value's own keystream");
        xor(data, ks);
        self.tag(Some(hasher), aad, data, mask)
    }

    /// Open one value of a run in place with its mask and keystream (from
    /// [`Gcm::keystreams`]), hashed with the run's `hasher`: decrypted only if
    /// `tag` matches, which it returns.
    #[inline]
    pub fn open_in_run(
        &self,
        hasher: &mut Hasher,
        aad: Aad<'_>,
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
        (mask, ks): (&Block, &[Block]),
    ) -> bool {
        assert_eq!(ks.len(), data.len().div_ceil(16), "a value's own keystream");
        let good =
            data.len() as u64 <= P_MAX && tags_equal(&self.tag(Some(hasher), aad, data, mask), tag);
        if good {
            xor(data, ks);
        }
        good
    }

    /// XOR `data` with the keystream of `nonce` (counter blocks from 2) and
    /// return the tag mask (the encrypted counter block 1). `before` sees the
    /// mask and the data before it changes; if it returns false, nothing is
    /// changed (a tag that did not match). A short value's mask and counter
    /// blocks go through one block-cipher call, on the stack (wiped after); a
    /// longer one's counter blocks through the `ctr` crate's CTR mode, which
    /// XORs each part of the keystream into the data as it makes it.
    fn apply_keystream(
        &self,
        nonce: &[u8; NONCE_LEN],
        data: &mut [u8],
        before: impl FnOnce((&Block, &[u8])) -> bool,
    ) -> Block {
        let total = data.len().div_ceil(16);
        if total < STACK_BLOCKS {
            let mut stack = [Block::default(); STACK_BLOCKS];
            let blocks = &mut stack[..=total];
            fill_counters(blocks, nonce, 1);
            self.aes.encrypt_blocks(blocks);
            let mask = blocks[0];
            if before((&mask, data)) {
                xor(data, &blocks[1..]);
            }
            wipe(blocks);
            return mask;
        }
        let mut j0 = Block::default();
        fill_counters(std::slice::from_mut(&mut j0), nonce, 1);
        let mut ctr =
            ctr::CtrCore::<&aes::Aes256, ctr::flavors::Ctr32BE>::inner_iv_init(&self.aes, &j0);
        let mut mask = Block::default();
        ctr.write_keystream_block(&mut mask);
        if before((&mask, data)) {
            ctr.apply_keystream_partial(data.into());
        }
        mask
    }

    /// GHASH over the associated data and the ciphertext, masked, with a
    /// run's `hasher` (a short value; left at zero again) or a fresh copy of
    /// the key's hash state. With a prefix, it starts from the prefix's accumulator after as many of its
    /// whole blocks as leave the rest in whole groups of four (or all of
    /// them), XORed into the first block hashed (both wiped after). A short value (up to [`SHORT_BLOCKS`] blocks with its
    /// lengths, as a stored field usually is) is reversed into one stack
    /// buffer and handed to POLYVAL in one call; a longer one streams through
    /// [`Ghash`].
    fn tag(
        &self,
        hasher: Option<&mut Hasher>,
        aad: Aad<'_>,
        ct: &[u8],
        mask: &Block,
    ) -> [u8; TAG_LEN] {
        if let Some(h) = &hasher {
            assert_eq!(h.gcm, self.serial, "a hasher of another key");
        }
        let shared = aad.shared();
        let aad_len = shared.len() + aad.rest.len();
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(aad_len as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(ct.len() as u64 * 8).to_be_bytes());
        let total = aad_len.div_ceil(16) + ct.len().div_ceil(16) + 1;
        let (mut start, skip) = match aad.prefix {
            Some(p) => {
                assert_eq!(p.gcm, self.serial, "a prefix hashed under another key");
                // The most whole blocks of the prefix whose skipping leaves
                // the rest in groups of four, or all of them if none does.
                let most = p.whole_blocks();
                let skip = most
                    .checked_sub((most % 4 + 4 - total % 4) % 4)
                    .unwrap_or(most);
                (p.state(skip), skip)
            }
            None => (Block::default(), 0),
        };
        let head = &shared[skip * 16..];
        let n = total - skip;
        let hash = if n <= SHORT_BLOCKS {
            let mut blocks = [Block::default(); SHORT_BLOCKS];
            let mut at = 0;
            padded_blocks(head, aad.rest, |b| {
                blocks[at] = reversed(b);
                at += 1;
            });
            at = reverse_padded(&mut blocks, at, ct);
            blocks[at] = reversed(&lengths);
            blocks[0] = xor_block(&blocks[0], &start);
            let hash = match hasher {
                Some(h) => {
                    h.polyval.update(&blocks[..n]);
                    ghash_bytes(h.polyval.finalize_reset())
                }
                None => ghash_value(self.polyval.clone(), &blocks[..n]),
            };
            // The first block now tells the accumulator it started from.
            wipe(&mut blocks[..1]);
            hash
        } else {
            let mut g = Ghash {
                polyval: self.polyval.clone(),
                buf: [Block::default(); GHASH_BUF],
                n: 0,
                start,
                started: false,
            };
            padded_blocks(head, aad.rest, |b| g.absorb(b));
            padded_blocks(ct, &[], |b| g.absorb(b));
            g.absorb(&lengths);
            g.finish()
        };
        wipe(std::slice::from_mut(&mut start));
        (u128::from_ne_bytes(hash) ^ u128::from_ne_bytes((*mask).into())).to_ne_bytes()
    }
}

/// The blocks of `a` followed by `b`, the last one padded with zeros, to `f`
/// one by one (GHASH's blocks of associated data split in two).
#[inline]
fn padded_blocks(a: &[u8], b: &[u8], mut f: impl FnMut(&[u8; 16])) {
    let mut chunks = a.chunks_exact(16);
    for c in &mut chunks {
        f(c.try_into().expect("16 bytes"));
    }
    let rest = chunks.remainder();
    let b = if rest.is_empty() {
        b
    } else {
        // The block where `a` ends and `b` starts.
        let mut joint = [0u8; 16];
        joint[..rest.len()].copy_from_slice(rest);
        let take = (16 - rest.len()).min(b.len());
        joint[rest.len()..rest.len() + take].copy_from_slice(&b[..take]);
        f(&joint);
        &b[take..]
    };
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        f(c.try_into().expect("16 bytes"));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 16];
        last[..rest.len()].copy_from_slice(rest);
        f(&last);
    }
}

/// Blocks of associated data, ciphertext and lengths that [`Gcm::tag`] hashes
/// in one call (a 64-byte value whose associated data is 66 bytes, as in the
/// benchmarks, takes ten; fewer from a column's prefix).
const SHORT_BLOCKS: usize = 16;

/// One block in GHASH's byte order reversed for POLYVAL.
#[inline]
fn reversed(block: &[u8; 16]) -> Block {
    Block::from(u128::from_be_bytes(*block).to_le_bytes())
}

/// Write `data` (its last block padded with zeros) reversed into `out` from
/// block `at`; returns the next free block.
#[inline]
fn reverse_padded(out: &mut [Block], mut at: usize, data: &[u8]) -> usize {
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        out[at] = reversed(c.try_into().expect("16 bytes"));
        at += 1;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 16];
        last[..rest.len()].copy_from_slice(rest);
        out[at] = reversed(&last);
        at += 1;
    }
    at
}

/// Whether two tags are equal, in constant time (one comparison of the whole
/// 128 bits, not one per byte).
#[inline]
fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    bool::from(u128::from_ne_bytes(*a).ct_eq(&u128::from_ne_bytes(*b)))
}

/// Blocks GHASH collects before it hands them to POLYVAL (two of POLYVAL's
/// four-block groups).
const GHASH_BUF: usize = 8;

/// GHASH in progress: POLYVAL over blocks byte-reversed into `buf`.
struct Ghash {
    polyval: polyval::Polyval,
    buf: [Block; GHASH_BUF],
    n: usize,
    /// The accumulator to start from (XORed into the first block when the
    /// first blocks are hashed; wiped then).
    start: Block,
    started: bool,
}

impl Ghash {
    /// Absorb one block (big-endian GHASH order).
    #[inline]
    fn absorb(&mut self, block: &[u8; 16]) {
        self.buf[self.n] = reversed(block);
        self.n += 1;
        if self.n == GHASH_BUF {
            self.take_start();
            self.polyval.update(&self.buf);
            self.n = 0;
        }
    }

    /// XOR the accumulator to start from into the first block, before the
    /// first blocks are hashed (checked once per [`GHASH_BUF`] blocks, not
    /// per block).
    #[inline]
    fn take_start(&mut self) {
        if !self.started {
            self.started = true;
            self.buf[0] = xor_block(&self.buf[0], &self.start);
            wipe(std::slice::from_mut(&mut self.start));
        }
    }

    /// The GHASH value (not yet masked).
    fn finish(mut self) -> [u8; TAG_LEN] {
        self.take_start();
        let Ghash {
            polyval,
            mut buf,
            n,
            ..
        } = self;
        let hash = ghash_value(polyval, &buf[..n]);
        wipe(&mut buf);
        hash
    }
}

/// The GHASH value (not yet masked) of `polyval` after the last `blocks`
/// (reversed, as [`reversed`] gives them).
fn ghash_value(mut polyval: polyval::Polyval, blocks: &[Block]) -> [u8; TAG_LEN] {
    polyval.update(blocks);
    ghash_bytes(polyval.finalize())
}

/// GHASH's value from POLYVAL's (over reversed blocks): reversed back.
#[inline]
fn ghash_bytes(polyval: Block) -> [u8; TAG_LEN] {
    let out: [u8; 16] = polyval.into();
    u128::from_le_bytes(out).to_be_bytes()
}

/// `a ^ b`.
#[inline]
fn xor_block(a: &Block, b: &Block) -> Block {
    let (a, b): ([u8; 16], [u8; 16]) = ((*a).into(), (*b).into());
    Block::from((u128::from_ne_bytes(a) ^ u128::from_ne_bytes(b)).to_ne_bytes())
}

/// Counter blocks `nonce || (start + i)` (32-bit big-endian counter) for
/// `i` from 0, each written once. The counter is 32 bits (inc32); a value is
/// at most 2^32 - 2 blocks, so it never wraps.
fn counters(nonce: &[u8; NONCE_LEN], start: usize) -> impl Iterator<Item = Block> {
    let mut block = Block::default();
    block[..NONCE_LEN].copy_from_slice(nonce);
    (start..).map(move |i| {
        block[NONCE_LEN..].copy_from_slice(&(i as u32).to_be_bytes());
        block
    })
}

/// [`counters`] into every block of `out`.
fn fill_counters(out: &mut [Block], nonce: &[u8; NONCE_LEN], start: usize) {
    for (b, c) in out.iter_mut().zip(counters(nonce, start)) {
        *b = c;
    }
}

/// `data ^= keystream` (the keystream may be longer: its tail is unused),
/// a whole block at a time.
fn xor(data: &mut [u8], keystream: &[Block]) {
    let mut chunks = data.chunks_exact_mut(16);
    let mut ks = keystream.iter();
    for (chunk, k) in (&mut chunks).zip(&mut ks) {
        let k: [u8; 16] = (*k).into();
        let d: [u8; 16] = (&*chunk).try_into().expect("16 bytes");
        chunk.copy_from_slice(&(u128::from_ne_bytes(d) ^ u128::from_ne_bytes(k)).to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    if let Some(k) = ks.next() {
        for (d, k) in rest.iter_mut().zip(k.iter()) {
            *d ^= k;
        }
    }
}

fn wipe(blocks: &mut [Block]) {
    for b in blocks {
        b.as_mut_slice().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::AeadInOut;

    fn reference(key: &[u8; 32]) -> aes_gcm::Aes256Gcm {
        aes_gcm::Aes256Gcm::new(key.into())
    }

    fn unhex(s: &str) -> Vec<u8> {
        crate::format::unhex(s).expect("hex")
    }

    fn random<const N: usize>() -> [u8; N] {
        let mut b = [0u8; N];
        rand::fill(&mut b);
        b
    }

    fn random_vec(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::fill(&mut v[..]);
        v
    }

    /// NIST GCM test vectors (gcmEncryptExtIV256.rsp: 96-bit IV, 128-bit tag).
    #[test]
    fn nist_vectors() {
        let cases = [
            (
                "b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4",
                "516c33929df5a3284ff463d7",
                "",
                "",
                "",
                "bdc1ac884d332457a1d2664f168c76f0",
            ),
            (
                "31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22",
                "0d18e06c7c725ac9e362e1ce",
                "2db5168e932556f8089a0622981d017d",
                "",
                "fa4362189661d163fcd6a56d8bf0405a",
                "d636ac1bbedd5cc3ee727dc2ab4a9489",
            ),
            (
                "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
                "ac93a1a6145299bde902f21a",
                "2d71bcfa914e4ac045b2aa60955fad24",
                "1e0889016f67601c8ebea4943bc23ad6",
                "8995ae2e6df3dbf96fac7b7137bae67f",
                "eca5aa77d51d4a0a14d9c51e1da474ab",
            ),
        ];
        for (key, iv, pt, aad, ct, tag) in cases {
            let key: [u8; 32] = unhex(key).try_into().unwrap();
            let nonce: [u8; 12] = unhex(iv).try_into().unwrap();
            let gcm = Gcm::new(&key);
            let mut data = unhex(pt);
            let got = gcm.seal(&nonce, Aad::whole(&unhex(aad)), &mut data);
            assert_eq!(data, unhex(ct));
            assert_eq!(got.to_vec(), unhex(tag));
            gcm.open(&nonce, Aad::whole(&unhex(aad)), &mut data, &got)
                .unwrap();
            assert_eq!(data, unhex(pt));
        }
    }

    /// Every length from 0 to 600 bytes (short values on the stack, from 129
    /// bytes through CTR mode; GHASH in one call up to sixteen blocks, then
    /// eight at a time), and a few longer values, whole blocks or not,
    /// against `aes-gcm`; then tampering with the ciphertext, the
    /// tag and the associated data.
    #[test]
    fn same_as_aes_gcm() {
        // Values of several KiB through CTR mode: just under, at and just
        // over 4 KiB (a partial last block, whole blocks), 8 KiB + 40 and
        // 20 KiB + 3 bytes.
        let lengths = (0..=600).chain([4079, 4080, 4095, 4096, 4097, 8232, 20483]);
        for len in lengths {
            let key = random::<32>();
            let nonce = random::<12>();
            let aad = random_vec(len % 77);
            let pt = random_vec(len);
            let gcm = Gcm::new(&key);
            let mut ours = pt.clone();
            let tag = gcm.seal(&nonce, Aad::whole(&aad), &mut ours);
            let mut theirs = pt.clone();
            let want = reference(&key)
                .encrypt_inout_detached(&nonce.into(), &aad, theirs.as_mut_slice().into())
                .unwrap();
            assert_eq!(ours, theirs, "ciphertext, {len} bytes");
            assert_eq!(tag[..], want[..], "tag, {len} bytes");
            let mut bad = ours.clone();
            if !bad.is_empty() {
                let i = len * 7 % bad.len();
                bad[i] ^= 1;
                assert_eq!(
                    gcm.open(&nonce, Aad::whole(&aad), &mut bad, &tag),
                    Err(TagMismatch)
                );
                bad[i] ^= 1;
                assert_eq!(bad, ours, "a refused value is left as it was");
            }
            let mut bad_tag = tag;
            bad_tag[len % 16] ^= 0x80;
            assert_eq!(
                gcm.open(&nonce, Aad::whole(&aad), &mut bad, &bad_tag),
                Err(TagMismatch)
            );
            let mut other_aad = aad.clone();
            other_aad.push(0);
            assert_eq!(
                gcm.open(&nonce, Aad::whole(&other_aad), &mut bad, &tag),
                Err(TagMismatch)
            );
            assert_eq!(bad, ours);
            gcm.open(&nonce, Aad::whole(&aad), &mut ours, &tag).unwrap();
            assert_eq!(ours, pt);
        }
    }

    /// The scratch buffer keeps its memory while it has room, and gets new
    /// memory (the old wiped first) only when a run needs more.
    #[test]
    fn keystream_moves_only_to_grow() {
        let mut ks = Keystream::default();
        ks.clear_for(8).resize(8, Block::from([0xa5; 16]));
        let (at, cap) = (ks.0.as_ptr(), ks.0.capacity());
        let same = ks.clear_for(cap);
        assert_eq!((same.as_ptr(), same.len()), (at, 0));
        let grown = ks.clear_for(cap + 1);
        assert!(grown.capacity() > cap);
        assert!(grown.is_empty());
    }

    /// One value of a test run: nonce, associated data, data, and the tag to
    /// open it with (none: seal it).
    type RunValue<'a> = ([u8; 12], Aad<'a>, Vec<u8>, Option<[u8; 16]>);

    /// Seal (`tag` is `None`) or open (`tag` given) `data` as a run of
    /// values, each with its nonce and associated data; returns each value's
    /// tag (written when sealing, given when opening) and whether it opened.
    fn run(gcm: &Gcm, buf: &mut Keystream, values: &mut [RunValue<'_>]) -> Vec<([u8; 16], bool)> {
        let mut streams = gcm.keystreams(values.iter().map(|v| (&v.0, v.2.len())), buf);
        let mut hasher = gcm.hasher();
        values
            .iter_mut()
            .map(|(_, aad, data, tag)| {
                let ks = streams.next();
                match tag {
                    None => (gcm.seal_in_run(&mut hasher, *aad, data, ks), true),
                    Some(t) => (*t, gcm.open_in_run(&mut hasher, *aad, data, t, ks)),
                }
            })
            .collect()
    }

    /// Give each value its tag from `tags` (`broken`'s altered) and open them
    /// as one run: whether each opened.
    fn open_with_one_broken(
        gcm: &Gcm,
        buf: &mut Keystream,
        items: &mut [RunValue<'_>],
        tags: &[[u8; 16]],
        broken: Option<usize>,
    ) -> Vec<bool> {
        for (i, (item, tag)) in items.iter_mut().zip(tags).enumerate() {
            let mut tag = *tag;
            if Some(i) == broken {
                tag[0] ^= 1;
            }
            item.3 = Some(tag);
        }
        run(gcm, buf, items).into_iter().map(|(_, ok)| ok).collect()
    }

    /// A run gives each value what sealing it alone gives; opening a run with
    /// one broken tag fails that value alone and leaves it as it was; the
    /// scratch buffer's wipe clears all it has room for.
    #[test]
    fn runs_match_value_by_value() {
        let gcm = Gcm::new(&random::<32>());
        let mut buf = Keystream::default();
        for count in [0, 1, 2, 7, 40] {
            let values: Vec<([u8; 12], Vec<u8>, Vec<u8>)> = (0..count)
                .map(|i| (random::<12>(), random_vec(i % 45), random_vec(i * 37 % 300)))
                .collect();
            let mut items: Vec<_> = values
                .iter()
                .map(|(nonce, aad, pt)| (*nonce, Aad::whole(aad), pt.clone(), None))
                .collect();
            let tags: Vec<[u8; 16]> = run(&gcm, &mut buf, &mut items)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            assert_eq!(count > 0, buf.0.iter().any(|b| b.iter().any(|&x| x != 0)));
            buf.wipe();
            assert_eq!(buf.0.len(), buf.0.capacity());
            assert!(buf.0.iter().all(|b| b.iter().all(|&x| x == 0)));
            for (((nonce, aad, pt), item), tag) in values.iter().zip(&items).zip(&tags) {
                let mut one = pt.clone();
                assert_eq!(&gcm.seal(nonce, Aad::whole(aad), &mut one), tag);
                assert_eq!(one, item.2);
            }
            let cts: Vec<Vec<u8>> = items.iter().map(|i| i.2.clone()).collect();
            let broken = (count > 0).then_some(count / 2);
            let ok = open_with_one_broken(&gcm, &mut buf, &mut items, &tags, broken);
            assert_eq!(count > 0, buf.0.iter().any(|b| b.iter().any(|&x| x != 0)));
            buf.wipe();
            assert_eq!(buf.0.len(), buf.0.capacity());
            assert!(buf.0.iter().all(|b| b.iter().all(|&x| x == 0)));
            for (i, (v, item)) in values.iter().zip(&items).enumerate() {
                assert_eq!(ok[i], Some(i) != broken);
                if Some(i) == broken {
                    assert_eq!(item.2, cts[i]);
                } else {
                    assert_eq!(item.2, v.2);
                }
            }
        }
    }

    /// A prefix hashed under one key is refused by another, rather than
    /// giving a tag no one could check.
    #[test]
    #[should_panic(expected = "a prefix hashed under another key")]
    fn a_prefix_belongs_to_its_key() {
        let key = random::<32>();
        let (one, other) = (Gcm::new(&key), Gcm::new(&key));
        let prefix = one.aad_prefix(b"shared part of the associated data");
        let mut data = *b"value";
        other.seal(&random::<12>(), Aad::split(&prefix, b"own"), &mut data);
    }

    /// A run's hash state belongs to its key too.
    #[test]
    #[should_panic(expected = "a hasher of another key")]
    fn a_hasher_belongs_to_its_key() {
        let key = random::<32>();
        let (one, other) = (Gcm::new(&key), Gcm::new(&key));
        let mut buf = Keystream::default();
        let nonce = random::<12>();
        let mut data = *b"value";
        let mut streams = other.keystreams([(&nonce, data.len())].into_iter(), &mut buf);
        let ks = streams.next();
        other.seal_in_run(&mut one.hasher(), Aad::whole(b""), &mut data, ks);
    }

    /// Associated data split into a prefix hashed once and the rest gives the
    /// tag of the whole, for prefixes of every length (whole blocks or not)
    /// and values of every block count (so every number of prefix blocks
    /// skipped), short and long values; a value whose own part differs fails.
    #[test]
    fn aad_prefix_gives_the_whole_aad_tag() {
        let gcm = Gcm::new(&random::<32>());
        let mut buf = Keystream::default();
        for aad_len in 0..80 {
            let aad = random_vec(aad_len);
            let splits = [
                0,
                1,
                15,
                16,
                17,
                31,
                32,
                33,
                48,
                50,
                64,
                aad_len / 2,
                aad_len,
            ];
            for split in splits.into_iter().filter(|s| *s <= aad_len) {
                let prefix = gcm.aad_prefix(&aad[..split]);
                assert_eq!(prefix.whole_blocks(), split / 16);
                assert_eq!(prefix.states.len(), (split / 16).min(3) + 1);
                let split_aad = Aad::split(&prefix, &aad[split..]);
                assert_eq!(split_aad.to_vec(), aad);
                // Every length below again as one run (one hash state from
                // value to value, each skipping its own number of blocks).
                let mut together = Vec::new();
                for pt_len in [0, 1, 16, 17, 33, 64, 100, 170, 185, 200, 300] {
                    let nonce = random::<12>();
                    let pt = random_vec(pt_len);
                    let mut whole = pt.clone();
                    let want = gcm.seal(&nonce, Aad::whole(&aad), &mut whole);
                    together.push(((nonce, split_aad, pt.clone(), None), want));
                    let mut items = [(nonce, split_aad, pt.clone(), None)];
                    let [(tag, _)] = run(&gcm, &mut buf, &mut items)[..] else {
                        panic!("one value")
                    };
                    assert_eq!(tag, want, "aad {aad_len}, split {split}, pt {pt_len}");
                    assert_eq!(items[0].2, whole);
                    // One value alone (not in a run) from the prefix.
                    let mut single = pt.clone();
                    assert_eq!(gcm.seal(&nonce, split_aad, &mut single), want);
                    assert_eq!(single, whole);
                    gcm.open(&nonce, split_aad, &mut single, &want).unwrap();
                    assert_eq!(single, pt);
                    if split < aad_len {
                        let mut other = aad[split..].to_vec();
                        other[aad_len - split - 1] ^= 1;
                        let mut bad = [(
                            nonce,
                            Aad::split(&prefix, &other),
                            whole.clone(),
                            Some(want),
                        )];
                        assert!(!run(&gcm, &mut buf, &mut bad)[0].1);
                        assert_eq!(bad[0].2, whole, "a refused value is left as it was");
                        let mut single = whole.clone();
                        let other_aad = Aad::split(&prefix, &other);
                        assert_eq!(
                            gcm.open(&nonce, other_aad, &mut single, &want),
                            Err(TagMismatch)
                        );
                        assert_eq!(single, whole);
                    }
                    items[0].3 = Some(want);
                    assert!(run(&gcm, &mut buf, &mut items)[0].1);
                    assert_eq!(items[0].2, pt);
                }
                let (mut items, wants): (Vec<RunValue<'_>>, Vec<[u8; 16]>) =
                    together.into_iter().unzip();
                let plain: Vec<Vec<u8>> = items.iter().map(|i| i.2.clone()).collect();
                let tags: Vec<[u8; 16]> = run(&gcm, &mut buf, &mut items)
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
                assert_eq!(tags, wants, "aad {aad_len}, split {split}, one run");
                // Opened as one run with one broken tag in the middle: that
                // value alone fails (left as it was), the ones after it open.
                let broken = items.len() / 2;
                let sealed: Vec<Vec<u8>> = items.iter().map(|i| i.2.clone()).collect();
                let ok = open_with_one_broken(&gcm, &mut buf, &mut items, &wants, Some(broken));
                for (i, item) in items.iter().enumerate() {
                    assert_eq!(
                        ok[i],
                        i != broken,
                        "aad {aad_len}, split {split}, value {i}"
                    );
                    let want = if i == broken { &sealed[i] } else { &plain[i] };
                    assert_eq!(&item.2, want, "aad {aad_len}, split {split}, value {i}");
                }
            }
        }
    }
}
