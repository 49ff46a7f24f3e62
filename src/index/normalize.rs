//! What a blind index hashes: normalised, optionally transformed text.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;

/// How text is normalised before it is indexed, in this order: Unicode NFKC
/// (folds fullwidth forms, ligatures, non-breaking spaces, superscripts),
/// trimming of leading and trailing white space, lowercasing (Unicode-aware),
/// then an optional function of your own. The same normalisation runs when a
/// row is sealed and when a lookup computes the value it searches for.
///
/// Changing the normalisation of an index changes its values: do it with a new
/// index version (see the README's "Rotating an index key").
#[derive(Debug, Clone, Copy, Default)]
pub struct Normalization {
    /// Unicode NFKC.
    pub nfkc: bool,
    /// Trim white space at both ends.
    pub trim: bool,
    /// Lowercase.
    pub lowercase: bool,
    /// A function of your own, applied last.
    pub custom: Option<fn(&str) -> String>,
}

impl Normalization {
    /// No normalisation: the text as is.
    pub const NONE: Normalization = Normalization {
        nfkc: false,
        trim: false,
        lowercase: false,
        custom: None,
    };

    /// NFKC, trim and lowercase: what e-mail addresses and user names want.
    pub const CASELESS: Normalization = Normalization {
        nfkc: true,
        trim: true,
        lowercase: true,
        custom: None,
    };

    /// Normalise `text`.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut s: Cow<'a, str> = Cow::Borrowed(text);
        if self.nfkc
            && !unicode_normalization::is_nfkc_quick(s.chars())
                .eq(&unicode_normalization::IsNormalized::Yes)
        {
            s = Cow::Owned(s.nfkc().collect());
        }
        if self.trim {
            s = match s {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
            };
        }
        if self.lowercase && s.chars().any(|c| c.is_uppercase()) {
            s = Cow::Owned(s.to_lowercase());
        }
        if let Some(f) = self.custom {
            s = Cow::Owned(f(&s));
        }
        s
    }
}

/// A transformation of the (normalised) text that indexes a part of it, for
/// lookups such as "the last four digits of the phone number" or "everyone at
/// example.com". Transforms shrink the input domain: give the index fewer bits
/// (see [`super::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transform {
    /// The text itself.
    #[default]
    Identity,
    /// Only the decimal digits.
    DigitsOnly,
    /// The last `n` decimal digits (fewer if the text has fewer).
    LastDigits(u8),
    /// The domain of an e-mail address: what follows the last `@` (the empty
    /// string if there is none).
    EmailDomain,
}

impl Transform {
    /// Transform `text`.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self {
            Transform::Identity => Cow::Borrowed(text),
            Transform::DigitsOnly => {
                Cow::Owned(text.chars().filter(char::is_ascii_digit).collect())
            }
            Transform::LastDigits(n) => {
                let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).collect();
                let from = digits.len().saturating_sub(usize::from(*n));
                Cow::Owned(digits[from..].iter().collect())
            }
            Transform::EmailDomain => match text.rfind('@') {
                Some(i) => Cow::Borrowed(&text[i + 1..]),
                None => Cow::Borrowed(""),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caseless_folds_case_width_and_space() {
        let n = Normalization::CASELESS;
        assert_eq!(n.apply("Ada@Example.com "), "ada@example.com");
        assert_eq!(
            n.apply("\u{FF21}da@example.com"),
            "ada@example.com",
            "fullwidth A"
        );
        assert_eq!(n.apply("\u{00A0}ada@example.com\t"), "ada@example.com");
        assert_eq!(Normalization::NONE.apply(" A "), " A ");
        let custom = Normalization {
            custom: Some(|s| s.replace('.', "")),
            ..Normalization::CASELESS
        };
        assert_eq!(custom.apply("A.da@x"), "ada@x");
    }

    #[test]
    fn transforms() {
        assert_eq!(Transform::LastDigits(4).apply("+44 20 7946 0958"), "0958");
        assert_eq!(Transform::LastDigits(4).apply("12"), "12");
        assert_eq!(Transform::DigitsOnly.apply("a1b2"), "12");
        assert_eq!(
            Transform::EmailDomain.apply("ada@example.com"),
            "example.com"
        );
        assert_eq!(Transform::EmailDomain.apply("x"), "");
        assert_eq!(Transform::Identity.apply("x"), "x");
    }
}
