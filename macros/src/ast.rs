//! The derive input, checked: what `expand` needs and nothing it can get wrong.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, PathArguments, Type, Visibility};

use crate::attr::{self, Errors};

pub struct Input<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub table: String,
    /// Indices into `fields` of the primary-key fields, in key order.
    pub pk: Vec<usize>,
    pub tenant: Option<usize>,
    /// `#[envelope(id_not_secret)]`.
    pub id_not_secret: bool,
    pub fields: Vec<Field<'a>>,
    /// Every blind index: the fields' own in field order, then the compound
    /// ones of `#[envelope(index(...))]`; the order of `INDEXES`.
    pub indexes: Vec<Index>,
}

/// One blind index and the fields (indices into `Input::fields`) it hashes,
/// in order.
pub struct Index {
    pub attr: crate::attr::IndexAttr,
    pub fields: Vec<usize>,
}

pub struct Field<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub ty: &'a Type,
    pub encrypt: Option<Encrypt<'a>>,
    /// The variant of the generated column enum, for columns an update may
    /// write (not the primary key, not the tenant).
    pub variant: Option<Ident>,
}

pub struct Encrypt<'a> {
    pub column: String,
    /// `Some(inner)` when the field is syntactically `Option<inner>`.
    pub option_of: Option<&'a Type>,
    pub hide_null: bool,
    pub pad: usize,
    pub json: bool,
    /// `migrating_from = "col"`: the plaintext column read while the
    /// encrypted one is NULL.
    pub migrating_from: Option<String>,
    /// `index(...)`: the blind indexes of this field, while parsing (then
    /// moved into `Input::indexes`).
    pub indexes: Vec<crate::attr::IndexAttr>,
}

impl Encrypt<'_> {
    /// Whether the sealed row holds `Option<Sealed>` for this field: an
    /// `Option` without `hide_null`, or a field migrating from plaintext.
    pub fn nullable_sealed(&self) -> bool {
        (self.option_of.is_some() && !self.hide_null) || self.migrating_from.is_some()
    }
}

impl Field<'_> {
    /// The column of the field in the sealed row.
    pub fn column(&self) -> String {
        match &self.encrypt {
            Some(e) => e.column.clone(),
            None => self.ident.to_string(),
        }
    }
}

impl<'a> Input<'a> {
    pub fn from_syn(input: &'a DeriveInput) -> syn::Result<Self> {
        let named = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(n) => n,
                Fields::Unnamed(u) => {
                    return Err(syn::Error::new(
                        u.span(),
                        "#[derive(Encrypted)] needs named fields: each field maps to a column by name; a tuple struct has none",
                    ));
                }
                Fields::Unit => {
                    return Err(syn::Error::new(
                        input.ident.span(),
                        "#[derive(Encrypted)] needs a struct with named fields, one per column",
                    ));
                }
            },
            Data::Enum(e) => {
                return Err(syn::Error::new(
                    e.enum_token.span,
                    "#[derive(Encrypted)] supports structs with named fields, not enums",
                ));
            }
            Data::Union(u) => {
                return Err(syn::Error::new(
                    u.union_token.span,
                    "#[derive(Encrypted)] supports structs with named fields, not unions",
                ));
            }
        };
        if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
            return Err(syn::Error::new_spanned(
                &input.generics,
                "#[derive(Encrypted)] does not support generic parameters: a model maps to one table with fixed column types",
            ));
        }

        let mut errors = Errors::default();
        let sattrs = attr::struct_attrs(&input.attrs, &mut errors);

        let mut fields = Vec::new();
        let mut enc_spans = Vec::new();
        for f in &named.named {
            let ident = f.ident.as_ref().expect("named field");
            let encrypt = match attr::field_attrs(&f.attrs, &mut errors) {
                None => {
                    enc_spans.push(None);
                    None
                }
                Some(a) => {
                    enc_spans.push(Some(a.attr.clone()));
                    let option_of = option_inner(&f.ty);
                    if let Err(e) = check_type(option_of.unwrap_or(&f.ty)) {
                        errors.push(e);
                    }
                    if let (Some(span), None) = (a.hide_null, option_of) {
                        errors.push(syn::Error::new(
                            span,
                            "`hide_null` applies to `Option<_>` fields only: this field can never be NULL",
                        ));
                    }
                    if let (Some(span), Some(_), true, None) =
                        (a.hide_null, option_of, a.json, a.pad)
                    {
                        errors.push(syn::Error::new(
                            span,
                            "`hide_null` on a JSON field needs `pad = N`: JSON has no fixed length, so a hidden NULL would be shorter than the values and show which rows are NULL; write `#[encrypt(json, hide_null, pad = 32)]` (N: a block size in bytes that most values fit in)",
                        ));
                    }
                    if let (Some(_), Some(plain)) = (a.hide_null, &a.migrating_from) {
                        errors.push(syn::Error::new(
                            plain.span(),
                            "`migrating_from` cannot be combined with `hide_null`: a NULL plaintext is not backfilled, so those rows would keep SQL NULL where `hide_null` stores a value; migrate the field without `hide_null`",
                        ));
                    }
                    for index in &a.indexes {
                        check_index_column(&index.column, &mut errors);
                    }
                    if let (true, Some(index)) = (a.json, a.indexes.first()) {
                        errors.push(syn::Error::new(
                            index.column.span(),
                            "a blind index cannot be built over a `json` field: its stored text is not a stable rendering of the value; index a typed field (text, integer, bool, char, UUID, date) instead",
                        ));
                    }
                    Some(Encrypt {
                        column: a.column.map_or_else(|| unraw(ident), |c| c.value()),
                        option_of,
                        hide_null: a.hide_null.is_some(),
                        pad: a.pad.unwrap_or(0),
                        json: a.json,
                        migrating_from: a.migrating_from.map(|c| c.value()),
                        indexes: a.indexes,
                    })
                }
            };
            fields.push(Field {
                ident,
                vis: &f.vis,
                ty: &f.ty,
                encrypt,
                variant: None,
            });
        }

        let find = |name: &Ident, what: &str, errors: &mut Errors| -> Option<usize> {
            let pos = fields.iter().position(|f| f.ident == name);
            if pos.is_none() {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("{what} `{name}` is not a field of this struct"),
                ));
            }
            pos
        };

        // "No primary key" and "no encrypted field" are about the struct as a
        // whole: after an attribute error they are likely its consequence, so
        // they are only reported for an input that is otherwise valid.
        let clean = errors.is_empty();
        let pk: Vec<usize> = match &sattrs.id {
            Some(ids) => ids
                .iter()
                .filter_map(|id| find(id, "primary key field", &mut errors))
                .collect(),
            None => match fields.iter().position(|f| f.ident == "id") {
                Some(i) => vec![i],
                None => {
                    if clean {
                        errors.push(syn::Error::new(
                            input.ident.span(),
                            "no primary key: name it with `#[envelope(id = \"field\")]` (or `#[envelope(id(a, b))]` for a composite key), or add a field named `id`; every encrypted value is bound to its row's primary key",
                        ));
                    }
                    Vec::new()
                }
            },
        };
        for &i in &pk {
            if let Some(attr) = &enc_spans[i] {
                errors.push(syn::Error::new_spanned(
                    attr,
                    format!(
                        "the primary key `{}` cannot be encrypted: it is bound into every encrypted value of the row and must stay queryable",
                        fields[i].ident
                    ),
                ));
            }
        }
        let tenant = sattrs
            .tenant
            .as_ref()
            .and_then(|t| find(t, "tenant field", &mut errors));
        if let Some(i) = tenant
            && let Some(attr) = &enc_spans[i]
        {
            errors.push(syn::Error::new_spanned(
                attr,
                format!("the tenant field `{}` cannot be encrypted: it is bound into every encrypted value of the row", fields[i].ident),
            ));
        }
        if clean && enc_spans.iter().all(Option::is_none) {
            errors.push(syn::Error::new(
                input.ident.span(),
                "no field is marked `#[encrypt]`: mark the fields to encrypt, or use sqlx::FromRow for a model without encrypted columns",
            ));
        }
        errors.finish()?;
        let mut errors = Errors::default();

        // The column enum: every column but the key and the tenant.
        for (i, f) in fields.iter_mut().enumerate() {
            if !pk.contains(&i) && tenant != Some(i) {
                f.variant = Some(Ident::new(&camel_case(&unraw(f.ident)), f.ident.span()));
            }
        }
        for (i, f) in fields.iter().enumerate() {
            let Some(v) = &f.variant else { continue };
            if let Some(other) = fields[..i].iter().find(|o| o.variant.as_ref() == Some(v)) {
                errors.push(syn::Error::new(
                    f.ident.span(),
                    format!(
                        "fields `{}` and `{}` both name the column enum variant `{v}`: rename one of them",
                        other.ident, f.ident
                    ),
                ));
            }
        }
        let mut indexes = Vec::new();
        for (i, f) in fields.iter_mut().enumerate() {
            if let Some(e) = f.encrypt.as_mut() {
                for attr in std::mem::take(&mut e.indexes) {
                    indexes.push(Index {
                        attr,
                        fields: vec![i],
                    });
                }
            }
        }
        for attr in sattrs.indexes {
            let mut ids = Vec::new();
            for name in &attr.fields {
                match fields.iter().position(|f| *name == unraw(f.ident)) {
                    Some(i) if fields[i].encrypt.is_some() && !ids.contains(&i) => ids.push(i),
                    Some(i) if ids.contains(&i) => errors.push(syn::Error::new(
                        name.span(),
                        format!("`{name}` is listed twice in the index"),
                    )),
                    Some(_) => errors.push(syn::Error::new(
                        name.span(),
                        format!("`{name}` is not encrypted: a blind index covers `#[encrypt]` fields (query a clear field directly)"),
                    )),
                    None => errors.push(syn::Error::new(
                        name.span(),
                        format!("no field `{name}` in this struct"),
                    )),
                }
            }
            check_index_column(&attr.column, &mut errors);
            indexes.push(Index { attr, fields: ids });
        }
        let mut seen: Vec<String> = Vec::new();
        for index in &indexes {
            let c = index.attr.column.value();
            if seen.contains(&c) || fields.iter().any(|f| f.column() == c) {
                errors.push(syn::Error::new(
                    index.attr.column.span(),
                    format!("column `{c}` is already used by another index or field"),
                ));
            }
            seen.push(c);
        }
        errors.finish()?;

        let table = sattrs
            .table
            .map_or_else(|| table_name(&input.ident.to_string()), |t| t.value());
        Ok(Input {
            ident: &input.ident,
            vis: &input.vis,
            table,
            pk,
            tenant,
            id_not_secret: sattrs.id_not_secret.is_some(),
            fields,
            indexes,
        })
    }
}

/// `date_of_birth` → `DateOfBirth`.
fn camel_case(field: &str) -> String {
    field
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn unraw(id: &Ident) -> String {
    let s = id.to_string();
    s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
}

/// `Some(T)` for a type written `Option<T>` (or `std::option::Option<T>`).
pub fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(t)] => Some(t),
        _ => None,
    }
}

/// Reject, with a message that says what to use instead, the field types that
/// can never be encrypted. Anything else is checked by the `FieldCodec` bound.
fn check_type(ty: &Type) -> syn::Result<()> {
    let msg = match ty {
        Type::Paren(p) => return check_type(&p.elem),
        Type::Group(g) => return check_type(&g.elem),
        Type::Reference(_) => {
            "an encrypted field cannot be a reference: a model owns its values (use `String` for `&str`, `Vec<u8>` for `&[u8]`)"
        }
        Type::Ptr(_) => "an encrypted field cannot be a raw pointer",
        Type::Tuple(t) if t.elems.is_empty() => {
            "an encrypted field cannot be `()`: there is nothing to encrypt"
        }
        Type::Tuple(_) => {
            "an encrypted field cannot be a tuple: use a struct, or store it as JSON with `#[encrypt(json)]`"
        }
        Type::Array(_) => {
            "an encrypted field cannot be an array: use `Vec<u8>` for bytes, or store it as JSON with `#[encrypt(json)]`"
        }
        Type::Slice(_) => "an encrypted field cannot be an unsized slice: use `Vec<_>`",
        Type::BareFn(_) => "an encrypted field cannot be a function pointer",
        Type::TraitObject(_) | Type::ImplTrait(_) => {
            "an encrypted field needs a concrete type that implements `sqlx_envelope::FieldCodec`"
        }
        Type::Never(_) => "an encrypted field cannot be `!`",
        Type::Infer(_) => "an encrypted field needs a concrete type",
        _ => return Ok(()),
    };
    Err(syn::Error::new(ty.span(), msg))
}

/// The default table name: the struct name in snake_case, its last word made
/// plural by the English rules `s/x/z/ch/sh` → `+es`, consonant + `y` → `ies`,
/// otherwise `+s`. `Patient` → `patients`, `MedicalRecord` → `medical_records`,
/// `Address` → `addresses`, `Category` → `categories`, `HTTPLog` → `http_logs`.
pub fn table_name(name: &str) -> String {
    let chars: Vec<char> = name.trim_start_matches("r#").chars().collect();
    let mut snake = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) => p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()),
            };
            if boundary {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    let consonant_y =
        snake.ends_with('y') && !snake[..snake.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    if consonant_y {
        snake.pop();
        snake.push_str("ies");
    } else if snake.ends_with(['s', 'x', 'z']) || snake.ends_with("ch") || snake.ends_with("sh") {
        snake.push_str("es");
    } else {
        snake.push('s');
    }
    snake
}

/// The span of a type, for diagnostics.
pub fn span_of(ty: &Type) -> Span {
    ty.span()
}

/// A blind index column becomes a field of the sealed row: it must be named
/// like one.
fn check_index_column(column: &syn::LitStr, errors: &mut Errors) {
    let c = column.value();
    let valid = c
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !valid {
        errors.push(syn::Error::new(
            column.span(),
            "a blind index column is named like a field: `[A-Za-z_][A-Za-z0-9_]*` (the sealed row gets a field of that name)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::table_name;

    #[test]
    fn variant_names() {
        assert_eq!(super::camel_case("date_of_birth"), "DateOfBirth");
        assert_eq!(super::camel_case("type"), "Type");
        assert_eq!(super::camel_case("_x2_y"), "X2Y");
    }

    #[test]
    fn table_names() {
        for (s, t) in [
            ("Patient", "patients"),
            ("MedicalRecord", "medical_records"),
            ("Address", "addresses"),
            ("Box", "boxes"),
            ("Match", "matches"),
            ("Wish", "wishes"),
            ("Category", "categories"),
            ("Key", "keys"),
            ("HTTPLog", "http_logs"),
            ("User2Fa", "user2_fas"),
            ("Oauth2Token", "oauth2_tokens"),
            ("patient", "patients"),
        ] {
            assert_eq!(table_name(s), t, "{s}");
        }
    }
}
