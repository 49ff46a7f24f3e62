//! How a field's plaintext is framed before it is encrypted: the `hide_null`
//! marker, the filler that makes a hidden `None` as long as a `Some`, and the
//! length padding of `pad = N`.
//!
//! AES-GCM hides the content of a value but not its length, so the frame is
//! where length leaks are closed. With `hide_null`, a `None` is stored as a
//! value (`0x00`), a `Some(v)` as `0x01` and the encoding of `v`; for a
//! fixed-width type the `None` marker is followed by as many zero bytes as the
//! type encodes to, so the two have the same length. A variable-width type has
//! no such length, so `hide_null` on it requires `pad = N` (the derive refuses
//! it at compile time otherwise): after padding, `None` and a short `Some` both
//! fill one block.
//!
//! The frame is also where plaintext buffers are sized. A buffer that grows
//! while it holds plaintext is reallocated, and the old allocation is freed
//! without being wiped: [`Framing::value`] reserves the final length (marker,
//! value, padding) before anything is written, and [`PlainBuf::reallocated`]
//! tells whether an encoder wrote more than it announced.
//!
//! Opening reverses the frame in the decrypted buffer itself
//! ([`Framing::unframe`]): padding is cut off and the marker shifted out in
//! place, and the bytes left behind are zeroized.

use zeroize::{Zeroize, Zeroizing};

use super::padding;
use crate::error::{Error, Result};

/// The frame of one encrypted column. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// `hide_null`: `None` is stored as a marker, not as SQL NULL.
    pub hide_null: bool,
    /// The length of every encoding of the field's type, for fixed-width
    /// types ([`super::FieldCodec::FIXED_LEN`]).
    pub fixed_len: Option<usize>,
    /// `pad = N` (0: no padding).
    pub pad: usize,
}

/// A plaintext buffer reserved for its final length. Zeroized on drop.
pub struct PlainBuf {
    bytes: Zeroizing<Vec<u8>>,
    reserved: usize,
}

impl PlainBuf {
    /// The buffer to encode into.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub(crate) fn zeroizing_mut(&mut self) -> &mut Zeroizing<Vec<u8>> {
        &mut self.bytes
    }

    /// The framed plaintext.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the buffer outgrew what was reserved for it (an encoder's
    /// `size_hint` was too small), leaving an unwiped copy of a prefix of the
    /// plaintext in freed memory.
    pub fn reallocated(&self) -> bool {
        self.bytes.capacity() != self.reserved
    }

    /// The bytes, still zeroizing.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.bytes
    }
}

impl std::fmt::Debug for PlainBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlainBuf(<{} bytes redacted>)", self.bytes.len())
    }
}

impl Framing {
    /// The frame of a field without `hide_null` or padding.
    pub const PLAIN: Framing = Framing {
        hide_null: false,
        fixed_len: None,
        pad: 0,
    };

    /// The framed length of a value whose encoding is `value_len` bytes.
    pub const fn framed_len(&self, value_len: usize) -> usize {
        let n = value_len + self.hide_null as usize;
        // Padding always adds at least one byte (0x80), then fills the block.
        match n.checked_div(self.pad) {
            Some(blocks) => (blocks + 1) * self.pad,
            None => n,
        }
    }

    /// A buffer for a value whose encoding is `value_len` bytes (or at most
    /// that), reserved for the whole frame, with the `Some` marker written.
    /// Encode the value into [`PlainBuf::out`], then call [`Framing::finish`].
    pub fn value(&self, value_len: usize) -> PlainBuf {
        let reserved = self.framed_len(value_len);
        let mut bytes = Zeroizing::new(Vec::with_capacity(reserved));
        if self.hide_null {
            bytes.push(1);
        }
        PlainBuf { bytes, reserved }
    }

    /// Pad the encoded value.
    pub fn finish(&self, buf: &mut PlainBuf) {
        if self.pad > 0 {
            padding::pad(&mut buf.bytes, self.pad);
        }
    }

    /// The frame of a hidden `None` (`hide_null`): the `None` marker, filled
    /// to the type's fixed length, padded.
    pub fn hidden_null(&self) -> PlainBuf {
        let fill = self.fixed_len.unwrap_or(0);
        let reserved = self.framed_len(fill);
        let mut bytes = Zeroizing::new(Vec::with_capacity(reserved));
        bytes.push(0);
        bytes.resize(1 + fill, 0);
        let mut buf = PlainBuf { bytes, reserved };
        self.finish(&mut buf);
        buf
    }

    /// The encoded value inside a decrypted frame, in the same buffer, or
    /// `None` for a hidden `None`. Accepts the lone `0x00` that 0.1 wrote for
    /// every hidden `None`.
    pub fn unframe(&self, mut plain: Zeroizing<Vec<u8>>) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if self.pad > 0 {
            let len = padding::unpad(&plain)?.len();
            plain[len..].zeroize();
            plain.truncate(len);
        }
        if !self.hide_null {
            return Ok(Some(plain));
        }
        match plain.split_first() {
            Some((0, rest)) => super::codec::hidden_none(rest, self.fixed_len).map(|()| None),
            Some((1, _)) => {
                let n = plain.len() - 1;
                plain.copy_within(1.., 0);
                plain[n..].zeroize();
                plain.truncate(n);
                Ok(Some(plain))
            }
            Some((b, _)) => Err(Error::codec(
                "Option",
                format!("invalid NULL marker 0x{b:02x}"),
            )),
            None => Err(Error::codec("Option", "empty value has no NULL marker")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(f: &Framing, value: Option<&[u8]>) -> PlainBuf {
        match value {
            Some(v) => {
                let mut b = f.value(v.len());
                b.out().extend_from_slice(v);
                f.finish(&mut b);
                b
            }
            None => f.hidden_null(),
        }
    }

    #[test]
    fn hidden_none_is_as_long_as_some_for_fixed_width() {
        let f = Framing {
            hide_null: true,
            fixed_len: Some(8),
            pad: 0,
        };
        let some = framed(&f, Some(&7_i64.to_be_bytes()));
        let none = framed(&f, None);
        assert_eq!(some.bytes().len(), 9);
        assert_eq!(none.bytes(), [0; 9]);
        assert!(!some.reallocated() && !none.reallocated());
        assert_eq!(
            f.unframe(some.into_inner())
                .expect("some")
                .as_deref()
                .map(|v| &v[..]),
            Some(&7_i64.to_be_bytes()[..])
        );
        assert_eq!(f.unframe(none.into_inner()).expect("none"), None);
        // 0.1 wrote a lone marker.
        assert_eq!(f.unframe(Zeroizing::new(vec![0])).expect("legacy"), None);
        for bad in [vec![], vec![0, 0], vec![0, 0, 0, 0, 0, 0, 0, 0, 1], vec![2]] {
            assert!(matches!(
                f.unframe(Zeroizing::new(bad)),
                Err(Error::Codec { .. })
            ));
        }
    }

    #[test]
    fn padded_variable_width_hides_presence_within_a_block() {
        let f = Framing {
            hide_null: true,
            fixed_len: None,
            pad: 16,
        };
        let none = framed(&f, None);
        let short = framed(&f, Some(b"+44 20 7946"));
        assert_eq!(none.bytes().len(), 16);
        assert_eq!(short.bytes().len(), 16);
        assert!(!none.reallocated() && !short.reallocated());
        assert_eq!(f.unframe(none.into_inner()).expect("none"), None);
        assert_eq!(
            f.unframe(short.into_inner())
                .expect("some")
                .as_deref()
                .map(|v| &v[..]),
            Some(&b"+44 20 7946"[..])
        );
    }

    #[test]
    fn reservations_are_exact_so_buffers_never_grow() {
        for pad in [0, 1, 7, 16] {
            for hide_null in [false, true] {
                let f = Framing {
                    hide_null,
                    fixed_len: None,
                    pad,
                };
                for len in 0..40 {
                    let b = framed(&f, Some(&vec![0xaa; len]));
                    assert!(!b.reallocated(), "{f:?} {len}");
                    assert_eq!(b.bytes().len(), f.framed_len(len));
                }
            }
        }
        // An encoder that writes more than it announced is detected.
        let f = Framing::PLAIN;
        let mut b = f.value(2);
        b.out().extend_from_slice(&[1; 64]);
        assert!(b.reallocated());
    }
}
