//! Length padding for `#[encrypt(pad = N)]`.
//!
//! AES-GCM ciphertext is exactly as long as its plaintext, so the stored length
//! of a value reveals the length of the value. With `pad = N` the encoded
//! plaintext is padded to the next multiple of `N` bytes before encryption, so
//! only the number of `N`-byte blocks is revealed.
//!
//! The padding is ISO/IEC 7816-4: one `0x80` byte, then `0x00` bytes up to the
//! next multiple of `N`. It is always added (a value that already fills its
//! blocks gains a whole block), and it is unambiguous: the value is everything
//! before the last `0x80` byte that is followed only by zeros.

use crate::error::{Error, Result};

/// Pad `buf` to a multiple of `block` bytes (`block > 0`).
pub fn pad(buf: &mut Vec<u8>, block: usize) {
    debug_assert!(block > 0, "padding block must be positive");
    buf.push(0x80);
    let rem = buf.len() % block.max(1);
    if rem != 0 {
        buf.resize(buf.len() + block - rem, 0);
    }
}

/// The value inside a padded buffer.
pub fn unpad(buf: &[u8]) -> Result<&[u8]> {
    let end = buf
        .iter()
        .rposition(|&b| b != 0)
        .ok_or_else(|| Error::codec("padding", "no padding marker"))?;
    if buf[end] != 0x80 {
        return Err(Error::codec("padding", "invalid padding marker"));
    }
    Ok(&buf[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_block_multiples() {
        let mut b = b"abc".to_vec();
        pad(&mut b, 8);
        assert_eq!(b, b"abc\x80\0\0\0\0");
        let mut b = vec![7u8; 7];
        pad(&mut b, 8);
        assert_eq!(b.len(), 8);
        let mut b = vec![7u8; 8];
        pad(&mut b, 8);
        assert_eq!(b.len(), 16);
        let mut b = Vec::new();
        pad(&mut b, 1);
        assert_eq!(b, [0x80]);
    }

    #[test]
    fn unpads_exactly() {
        for len in 0..40 {
            let v: Vec<u8> = (0..len)
                .map(|i| if i % 3 == 0 { 0 } else { 0x80 })
                .collect();
            let mut b = v.clone();
            pad(&mut b, 16);
            assert_eq!(b.len() % 16, 0);
            assert_eq!(unpad(&b).expect("unpad"), &v[..]);
        }
    }

    #[test]
    fn malformed_padding_is_a_codec_error() {
        assert!(matches!(unpad(&[]), Err(Error::Codec { .. })));
        assert!(matches!(unpad(&[0, 0]), Err(Error::Codec { .. })));
        assert!(matches!(unpad(&[1, 2, 0]), Err(Error::Codec { .. })));
    }
}
