//! Parsing of the `#[envelope(...)]` and `#[encrypt(...)]` attributes.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitInt, LitStr};

/// Errors collected while parsing, so that independent mistakes are all
/// reported at once (one error each) and nothing is expanded after any of them.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `#[envelope(...)]` on the struct.
#[derive(Default)]
pub struct StructAttrs {
    pub table: Option<LitStr>,
    /// The primary-key fields, in key order.
    pub id: Option<Vec<Ident>>,
    pub tenant: Option<Ident>,
    /// `id_not_secret`: the primary key may appear in error messages.
    pub id_not_secret: Option<Span>,
    /// `index(column = "...", fields = "a, b", ...)`: compound blind indexes.
    pub indexes: Vec<IndexAttr>,
}

const STRUCT_KEYS: &str = "expected `table = \"...\"`, `id = \"field\"`, `id(field, ...)`, `tenant = \"field\"`, `id_not_secret` or `index(column = \"...\", fields = \"a, b\", ...)`";

pub fn struct_attrs(attrs: &[Attribute], errors: &mut Errors) -> StructAttrs {
    let mut out = StructAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("encrypt") {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[encrypt]` marks a field; put it on the fields to encrypt, not on the struct",
            ));
            continue;
        }
        if !attr.path().is_ident("envelope") {
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "table" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "the table name cannot be empty",
                        ));
                    }
                    set_once(&mut out.table, lit, &meta.path, "table")
                }
                "id" => {
                    let mut ids = Vec::new();
                    if meta.input.peek(syn::Token![=]) {
                        let lit: LitStr = meta.value()?.parse()?;
                        ids.push(field_name(&lit)?);
                    } else if meta.input.peek(syn::token::Paren) {
                        meta.parse_nested_meta(|inner| match inner.path.get_ident() {
                            Some(id)
                                if inner.input.is_empty() || inner.input.peek(syn::Token![,]) =>
                            {
                                ids.push(id.clone());
                                Ok(())
                            }
                            _ => {
                                Err(inner
                                    .error("expected a field name, as in `id(tenant_id, number)`"))
                            }
                        })?;
                        if ids.is_empty() {
                            return Err(meta.error("`id(...)` needs at least one field"));
                        }
                    } else {
                        return Err(meta.error("expected `id = \"field\"` or `id(field, ...)`"));
                    }
                    for (i, a) in ids.iter().enumerate() {
                        if ids[..i].contains(a) {
                            return Err(syn::Error::new(
                                a.span(),
                                format!("`{a}` is listed twice in the primary key"),
                            ));
                        }
                    }
                    set_once(&mut out.id, ids, &meta.path, "id")
                }
                "tenant" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    let id = field_name(&lit)?;
                    set_once(&mut out.tenant, id, &meta.path, "tenant")
                }
                "index" => {
                    let index = parse_index(&meta, true)?;
                    if index.fields.len() < 2 {
                        return Err(syn::Error::new(
                            index.column.span(),
                            "a compound index names two or more encrypted fields: `fields = \"name, date_of_birth\"` (one field: put `index(...)` on the field)",
                        ));
                    }
                    out.indexes.push(index);
                    Ok(())
                }
                "id_not_secret" => {
                    if !(meta.input.is_empty() || meta.input.peek(syn::Token![,])) {
                        return Err(meta.error(
                            "`id_not_secret` is a flag: write `#[envelope(id_not_secret)]` to allow the primary key in error messages",
                        ));
                    }
                    set_once(
                        &mut out.id_not_secret,
                        meta.path.span(),
                        &meta.path,
                        "id_not_secret",
                    )
                }
                _ => Err(meta.error(format!(
                    "unknown `envelope` attribute `{}`; {STRUCT_KEYS}",
                    path_text(&meta.path)
                ))),
            }
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    out
}

/// `#[encrypt]` / `#[encrypt(...)]` on a field.
pub struct EncryptAttr {
    /// The whole attribute, for errors about the field being encrypted.
    pub attr: Attribute,
    pub column: Option<LitStr>,
    pub hide_null: Option<Span>,
    pub pad: Option<usize>,
    pub json: bool,
    pub migrating_from: Option<LitStr>,
    pub indexes: Vec<IndexAttr>,
}

/// `index = "col"` / `index(column = "col", ...)` on an encrypted field.
pub struct IndexAttr {
    /// The fields of a compound index (struct level), in hashing order.
    pub fields: Vec<Ident>,
    pub column: LitStr,
    pub nfkc: bool,
    pub trim: bool,
    pub lowercase: bool,
    pub normalize_with: Option<syn::Path>,
    /// `Identity`, `DigitsOnly`, `EmailDomain` or `LastDigits(n)`.
    pub transform: Option<(String, Option<u8>)>,
    pub bits: Option<u16>,
    pub expected_rows: Option<u64>,
    pub version: Option<u32>,
}

const INDEX_KEYS: &str = "expected `column = \"...\"`, `normalize = \"nfkc, trim, lowercase\"`, \
     `normalize_with = \"path::to::fn\"`, `transform = \"email_domain\" | \"digits_only\" | \"last_digits(N)\"`, \
     `bits = N`, `expected_rows = N` or `version = N`";

fn parse_index(meta: &syn::meta::ParseNestedMeta<'_>, compound: bool) -> syn::Result<IndexAttr> {
    let span = meta.path.span();
    if meta.input.peek(syn::Token![=]) && !compound {
        let column: LitStr = meta.value()?.parse()?;
        return Ok(IndexAttr {
            fields: Vec::new(),
            column,
            nfkc: false,
            trim: false,
            lowercase: false,
            normalize_with: None,
            transform: None,
            bits: None,
            expected_rows: None,
            version: None,
        });
    }
    let mut out = IndexAttr {
        fields: Vec::new(),
        column: LitStr::new("", span),
        nfkc: false,
        trim: false,
        lowercase: false,
        normalize_with: None,
        transform: None,
        bits: None,
        expected_rows: None,
        version: None,
    };
    let mut column: Option<LitStr> = None;
    meta.parse_nested_meta(|m| {
        let key = m.path.get_ident().map(Ident::to_string).unwrap_or_default();
        match key.as_str() {
            "column" => {
                let lit: LitStr = m.value()?.parse()?;
                set_once(&mut column, lit, &m.path, "column")
            }
            "fields" if compound => {
                let lit: LitStr = m.value()?.parse()?;
                for name in lit.value().split([',', ' ']).filter(|s| !s.is_empty()) {
                    let id = syn::parse_str::<Ident>(name).map_err(|_| {
                        syn::Error::new(lit.span(), format!("`{name}` is not a field name"))
                    })?;
                    out.fields.push(Ident::new(&id.to_string(), lit.span()));
                }
                Ok(())
            }
            "normalize" => {
                let lit: LitStr = m.value()?.parse()?;
                for step in lit.value().split([',', ' ']).filter(|s| !s.is_empty()) {
                    match step {
                        "nfkc" => out.nfkc = true,
                        "trim" => out.trim = true,
                        "lowercase" => out.lowercase = true,
                        other => {
                            return Err(syn::Error::new(
                                lit.span(),
                                format!("unknown normalisation `{other}`: expected `nfkc`, `trim` and/or `lowercase` (or `normalize_with = \"path::to::fn\"`)"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            "normalize_with" => {
                let lit: LitStr = m.value()?.parse()?;
                let path: syn::Path = lit.parse()?;
                set_once(&mut out.normalize_with, path, &m.path, "normalize_with")
            }
            "transform" => {
                let lit: LitStr = m.value()?.parse()?;
                let v = lit.value();
                let t = match v.as_str() {
                    "email_domain" => ("EmailDomain".to_owned(), None),
                    "digits_only" => ("DigitsOnly".to_owned(), None),
                    _ => match v
                        .strip_prefix("last_digits(")
                        .and_then(|r| r.strip_suffix(')'))
                        .and_then(|n| n.trim().parse::<u8>().ok())
                        .filter(|n| *n > 0)
                    {
                        Some(n) => ("LastDigits".to_owned(), Some(n)),
                        None => {
                            return Err(syn::Error::new(
                                lit.span(),
                                "unknown transform: expected `email_domain`, `digits_only` or `last_digits(N)` (N from 1 to 255)",
                            ));
                        }
                    },
                };
                set_once(&mut out.transform, t, &m.path, "transform")
            }
            "bits" => {
                let lit: LitInt = m.value()?.parse()?;
                let n: u16 = lit.base10_parse()?;
                if n == 0 || n > 256 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`bits` is from 1 to 256 (256: a full-length index, which can back a UNIQUE constraint)",
                    ));
                }
                set_once(&mut out.bits, n, &m.path, "bits")
            }
            "expected_rows" => {
                let lit: LitInt = m.value()?.parse()?;
                let n: u64 = lit.base10_parse()?;
                if n < 16 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`expected_rows` below 16 leaves no safe index length: give `bits = 256` for a full-length index instead",
                    ));
                }
                set_once(&mut out.expected_rows, n, &m.path, "expected_rows")
            }
            "version" => {
                let lit: LitInt = m.value()?.parse()?;
                let n: u32 = lit.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new(lit.span(), "`version` starts at 1"));
                }
                set_once(&mut out.version, n, &m.path, "version")
            }
            _ => Err(m.error(format!(
                "unknown `index` option `{}`; {INDEX_KEYS}",
                path_text(&m.path)
            ))),
        }
    })?;
    if let (Some(_), Some(_)) = (out.bits, out.expected_rows) {
        return Err(syn::Error::new(
            span,
            "give `bits` or `expected_rows`, not both: `expected_rows` only chooses `bits`",
        ));
    }
    out.column = column.ok_or_else(|| {
        syn::Error::new(
            span,
            "a blind index needs its column: `index(column = \"email_bidx\", ...)`",
        )
    })?;
    Ok(out)
}

const FIELD_KEYS: &str = "expected `column = \"...\"`, `hide_null`, `pad = N`, `json`, \
     `migrating_from = \"...\"` or `index(...)`";

pub fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> Option<EncryptAttr> {
    let mut out: Option<EncryptAttr> = None;
    for attr in attrs {
        if attr.path().is_ident("envelope") {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[envelope(...)]` configures the struct; on a field, use `#[encrypt]` or `#[encrypt(...)]`",
            ));
            continue;
        }
        if !attr.path().is_ident("encrypt") {
            continue;
        }
        if out.is_some() {
            errors.push(syn::Error::new(
                attr.span(),
                "duplicate `#[encrypt]` attribute",
            ));
            continue;
        }
        let mut enc = EncryptAttr {
            attr: attr.clone(),
            column: None,
            hide_null: None,
            pad: None,
            json: false,
            migrating_from: None,
            indexes: Vec::new(),
        };
        if let syn::Meta::List(_) = attr.meta {
            let parsed = attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(Ident::to_string)
                    .unwrap_or_default();
                match key.as_str() {
                    "column" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        if lit.value().is_empty() {
                            return Err(syn::Error::new(
                                lit.span(),
                                "the column name cannot be empty",
                            ));
                        }
                        set_once(&mut enc.column, lit, &meta.path, "column")
                    }
                    "index" => {
                        let index = parse_index(&meta, false)?;
                        if enc
                            .indexes
                            .iter()
                            .any(|i| i.column.value() == index.column.value())
                        {
                            return Err(syn::Error::new(
                                index.column.span(),
                                "duplicate blind index column",
                            ));
                        }
                        enc.indexes.push(index);
                        Ok(())
                    }
                    "migrating_from" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        if lit.value().is_empty() {
                            return Err(syn::Error::new(
                                lit.span(),
                                "the plaintext column name cannot be empty",
                            ));
                        }
                        set_once(&mut enc.migrating_from, lit, &meta.path, "migrating_from")
                    }
                    "hide_null" => set_once(
                        &mut enc.hide_null,
                        meta.path.span(),
                        &meta.path,
                        "hide_null",
                    ),
                    "json" => {
                        if enc.json {
                            return Err(meta.error("duplicate `json`"));
                        }
                        enc.json = true;
                        Ok(())
                    }
                    "pad" => {
                        let lit: LitInt = meta.value()?.parse()?;
                        let n: usize = lit.base10_parse()?;
                        if n == 0 || n > 65_536 {
                            return Err(syn::Error::new(
                                lit.span(),
                                "`pad` is a block size in bytes, from 1 to 65536",
                            ));
                        }
                        set_once(&mut enc.pad, n, &meta.path, "pad")
                    }
                    _ => Err(meta.error(format!(
                        "unknown `encrypt` option `{}`; {FIELD_KEYS}",
                        path_text(&meta.path)
                    ))),
                }
            });
            if let Err(e) = parsed {
                errors.push(e);
            }
        } else if let syn::Meta::NameValue(nv) = &attr.meta {
            errors.push(syn::Error::new(
                nv.eq_token.span,
                format!("expected `#[encrypt]` or `#[encrypt(...)]`; {FIELD_KEYS}"),
            ));
        }
        out = Some(enc);
    }
    out
}

fn set_once<T>(slot: &mut Option<T>, value: T, path: &syn::Path, name: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(path.span(), format!("duplicate `{name}`")));
    }
    *slot = Some(value);
    Ok(())
}

fn field_name(lit: &LitStr) -> syn::Result<Ident> {
    lit.parse::<Ident>()
        .map(|id| Ident::new(&id.to_string(), lit.span()))
        .map_err(|_| syn::Error::new(lit.span(), "expected the name of a field"))
}

fn path_text(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
