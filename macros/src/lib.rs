//! `#[derive(Encrypted)]` for sqlx-envelope. Use it through the `sqlx-envelope`
//! crate (feature `derive`, on by default), which documents the attributes in
//! `sqlx_envelope::model` and `docs/models.md`.
//!
//! The crate is laid out like serde_derive and thiserror: `attr` parses the
//! attributes, `ast` checks the input and builds a model of it, `expand`
//! generates code from that model. Every mistake is a `syn::Error` at the span
//! that caused it, and nothing is generated when there is one, so one mistake
//! gives one error.

mod ast;
mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derive `sqlx_envelope::model::Encrypted` and generate the sealed row type
/// `<Name>Sealed`. See `sqlx_envelope::model` for the attributes.
#[proc_macro_derive(Encrypted, attributes(envelope, encrypt))]
pub fn derive_encrypted(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match ast::Input::from_syn(&input) {
        Ok(ast) => expand::expand(&ast).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
