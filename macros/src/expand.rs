//! Code generation: the sealed row type, the column enum and the trait impls.
//!
//! The generated code does the per-field work only (encode one field into its
//! frame, open one value, bind one column); batching, key resolution, SQL and
//! errors live in the library (`sqlx_envelope::model::{batch, table, query}`),
//! written once and tested once.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

use crate::ast::{Field, Input, span_of};

/// Paths into the library, spelled once.
struct Paths {
    krate: TokenStream,
    private: TokenStream,
    sqlx: TokenStream,
}

pub fn expand(input: &Input<'_>) -> TokenStream {
    let krate = quote!(::sqlx_envelope);
    let private = quote!(#krate::model::__private);
    let sqlx = quote!(#private::sqlx);
    let p = Paths {
        krate,
        private,
        sqlx,
    };
    let sealed_row = sealed_row(input, &p);
    let column_enum = column_enum(input, &p);
    let assertions = hide_null_assertions(input, &p);
    let encrypted = encrypted_impl(input, &p);
    let sealed_impl = sealed_row_impl(input, &p);
    let table = table_impl(input, &p);
    let inherent = inherent_methods(input, &p);
    quote! {
        #sealed_row
        #column_enum
        #assertions
        #encrypted
        #sealed_impl
        #table
        #inherent
    }
}

fn sealed_ident(input: &Input<'_>) -> proc_macro2::Ident {
    format_ident!("{}Sealed", input.ident, span = input.ident.span())
}

fn column_ident(input: &Input<'_>) -> proc_macro2::Ident {
    format_ident!("{}Column", input.ident, span = input.ident.span())
}

/// The encrypted fields with their index in `DESCRIPTION.encrypted`.
fn encrypted_fields<'a, 'b>(input: &'b Input<'a>) -> impl Iterator<Item = (usize, &'b Field<'a>)> {
    input
        .fields
        .iter()
        .filter(|f| f.encrypt.is_some())
        .enumerate()
}

/// The struct that table stores, its `Debug` and its `FromRow`.
fn sealed_row(input: &Input<'_>, p: &Paths) -> TokenStream {
    let Paths { private, sqlx, .. } = p;
    let model_name = input.ident.to_string();
    let (vis, table, sealed) = (input.vis, &input.table, sealed_ident(input));
    let fields = input.fields.iter().map(|f| {
        let (ident, fvis, ty) = (f.ident, f.vis, sealed_type(f));
        let doc = match &f.encrypt {
            Some(e) => format!(
                "Ciphertext of `{model_name}::{ident}` (column `{}`).",
                e.column
            ),
            None => format!("`{model_name}::{ident}`, not encrypted."),
        };
        quote!(#[doc = #doc] #fvis #ident: #ty)
    });
    let index_fields = all_indexes(input).map(|(index, fs)| {
        let (fvis, name) = (fs[0].vis, index_ident(index));
        let names: Vec<String> = fs.iter().map(|f| format!("`{model_name}::{}`", f.ident)).collect();
        let doc = format!(
            "Blind index `{}` of {}: filled when the row is sealed, read when the query selects it.",
            index.column.value(),
            names.join(", ")
        );
        quote!(#[doc = #doc] #fvis #name: ::core::option::Option<::sqlx_envelope::index::BlindIndexValue>)
    });
    let index_from_row = all_indexes(input).map(|(index, _)| {
        let name = index_ident(index);
        let column = index.column.value();
        // Tolerant: a query that does not select the index column still reads
        // the row (the index is for writes and lookups).
        quote!(#name: match #sqlx::Row::try_get(__row, #column) {
            ::core::result::Result::Ok(__v) => __v,
            ::core::result::Result::Err(#sqlx::Error::ColumnNotFound(_)) => ::core::option::Option::None,
            ::core::result::Result::Err(__e) => return ::core::result::Result::Err(__e),
        })
    });
    let index_bound: Vec<TokenStream> = all_indexes(input)
        .take(1)
        .map(|_| {
            quote!(::core::option::Option<::sqlx_envelope::index::BlindIndexValue>: #sqlx::Decode<'__r, <__R as #sqlx::Row>::Database> + #sqlx::Type<<__R as #sqlx::Row>::Database>)
        })
        .collect();
    let plain_fields = migrating_fields(input).map(|(f, plain)| {
        let (fvis, name, ty) = (f.vis, plaintext_ident(f), plaintext_type(f, p));
        let doc = format!(
            "Plaintext of `{model_name}::{}` in column `{plain}`, read while the field migrates to \
             encryption (`migrating_from`): used only when the encrypted column is NULL.",
            f.ident
        );
        quote!(#[doc = #doc] #fvis #name: #ty)
    });
    let doc = format!(
        "The sealed row of [`{model_name}`]: what table `{table}` stores. Encrypted fields hold \
         ciphertext. `{model_name}::insert`, `update` and `fetch_by_key` read and write it for \
         you; for other queries, `sqlx::query_as::<_, {sealed}>(...).opened(&envelope)` returns \
         opened models."
    );
    let debug_fields = input
        .fields
        .iter()
        .filter(|f| f.encrypt.is_some())
        .map(|f| {
            let ident = f.ident;
            let name = ident.to_string();
            quote!(.field(#name, &#private::CipherLen(&self.#ident)))
        });
    let sealed_name = sealed.to_string();
    let from_row_bounds = input.fields.iter().map(|f| {
        let ty = sealed_type(f);
        quote_spanned!(span_of(f.ty)=> #ty: #sqlx::Decode<'__r, <__R as #sqlx::Row>::Database> + #sqlx::Type<<__R as #sqlx::Row>::Database>)
    });
    let from_row_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        let column = f.column();
        quote!(#ident: #sqlx::Row::try_get(__row, #column)?)
    });
    let plain_bounds = migrating_fields(input).map(|(f, _)| {
        let ty = plaintext_type(f, p);
        quote_spanned!(span_of(f.ty)=> #ty: #sqlx::Decode<'__r, <__R as #sqlx::Row>::Database> + #sqlx::Type<<__R as #sqlx::Row>::Database>)
    });
    let plain_from_row = migrating_fields(input).map(|(f, plain)| {
        let name = plaintext_ident(f);
        quote!(#name: #sqlx::Row::try_get(__row, #plain)?)
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone)]
        #vis struct #sealed {
            #(#fields,)*
            #(#plain_fields,)*
            #(#index_fields,)*
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #sealed {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#sealed_name)
                    #(#debug_fields)*
                    .finish_non_exhaustive()
            }
        }

        #[automatically_derived]
        impl<'__r, __R: #sqlx::Row> #sqlx::FromRow<'__r, __R> for #sealed
        where
            &'__r str: #sqlx::ColumnIndex<__R>,
            #(#from_row_bounds,)*
            #(#plain_bounds,)*
            #(#index_bound,)*
        {
            fn from_row(__row: &'__r __R) -> ::core::result::Result<Self, #sqlx::Error> {
                ::core::result::Result::Ok(Self {
                    #(#from_row_fields,)*
                    #(#plain_from_row,)*
                    #(#index_from_row,)*
                })
            }
        }
    }
}

/// `<Name>Column`: the columns an update may write.
fn column_enum(input: &Input<'_>, p: &Paths) -> TokenStream {
    let krate = &p.krate;
    let (vis, model) = (input.vis, input.ident);
    let ident = column_ident(input);
    let cols: Vec<_> = input
        .fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.variant.as_ref().map(|v| (i, v, f.column())))
        .collect();
    let variants = cols.iter().map(|(_, v, c)| {
        let doc = format!("Column `{c}`.");
        quote!(#[doc = #doc] #v)
    });
    let names = cols.iter().map(|(_, v, c)| quote!(Self::#v => #c));
    let indices = cols.iter().map(|(i, v, _)| quote!(Self::#v => #i));
    let doc = format!(
        "The columns of [`{model}`] that `update_fields` writes: every column but the primary key \
         and the tenant (`update` rewrites the whole row)."
    );
    quote! {
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
        #[allow(dead_code)]
        #vis enum #ident {
            #(#variants,)*
        }

        #[automatically_derived]
        impl #krate::model::Column for #ident {
            fn name(self) -> &'static str {
                match self { #(#names,)* }
            }
            fn index(self) -> usize {
                match self { #(#indices,)* }
            }
        }
    }
}

/// `hide_null` on a type without a fixed width needs `pad`: checked at
/// compile time, at the field's type, because only the trait knows the width.
fn hide_null_assertions(input: &Input<'_>, p: &Paths) -> TokenStream {
    let krate = &p.krate;
    let checks = input.fields.iter().filter_map(|f| {
        let e = f.encrypt.as_ref()?;
        if !e.hide_null || e.pad > 0 || e.json {
            return None;
        }
        let inner = e.option_of?;
        let msg = format!(
            "`hide_null` on `{}` needs `pad = N`: its type has no fixed width, so a hidden NULL would be \
             shorter than the values and show which rows are NULL; write `#[encrypt(hide_null, pad = 16)]` \
             (N: a block size in bytes that most values fit in)",
            f.ident
        );
        Some(quote_spanned! {span_of(inner)=>
            const _: () = {
                if <#inner as #krate::FieldCodec>::FIXED_LEN.is_none() {
                    ::core::panic!(#msg);
                }
            };
        })
    });
    quote!(#(#checks)*)
}

/// The frame constant of an encrypted field.
fn framing(f: &Field<'_>, p: &Paths) -> TokenStream {
    let (krate, private) = (&p.krate, &p.private);
    let e = f.encrypt.as_ref().expect("encrypted field");
    let inner = e.option_of.unwrap_or(f.ty);
    let fixed = if e.json {
        quote!(::core::option::Option::None)
    } else {
        quote_spanned!(span_of(inner)=> <#inner as #krate::FieldCodec>::FIXED_LEN)
    };
    let (hide_null, pad) = (e.hide_null, e.pad);
    quote!(#private::Framing { hide_null: #hide_null, fixed_len: #fixed, pad: #pad })
}

fn key_type(input: &Input<'_>) -> TokenStream {
    let tys: Vec<_> = input.pk.iter().map(|&i| input.fields[i].ty).collect();
    match tys.as_slice() {
        [one] => quote!(#one),
        many => quote!((#(#many,)*)),
    }
}

fn encrypted_impl(input: &Input<'_>, p: &Paths) -> TokenStream {
    let Paths { krate, private, .. } = p;
    let (model, table, sealed) = (input.ident, &input.table, sealed_ident(input));
    let model_name = model.to_string();
    let column = column_ident(input);
    let key_ty = key_type(input);

    let row_id = {
        let parts = input.pk.iter().map(|&i| {
            let f = &input.fields[i];
            let (ident, ty) = (f.ident, f.ty);
            quote_spanned!(span_of(ty)=> <#ty as #krate::model::PkField>::pk_part(&self.#ident)?)
        });
        quote!(::core::option::Option::Some(#krate::RowId::composite([#(#parts),*])))
    };
    let tenant = tenant_expr(input, p);
    let pk_cols = input.pk.iter().map(|&i| input.fields[i].column());
    let tenant_col = match input.tenant {
        Some(i) => {
            let c = input.fields[i].column();
            quote!(::core::option::Option::Some(#c))
        }
        None => quote!(::core::option::Option::None),
    };
    let all_cols: Vec<String> = input.fields.iter().map(Field::column).collect();
    let enc_cols: Vec<String> = encrypted_fields(input).map(|(_, f)| f.column()).collect();

    let desc_key = input.pk.iter().map(|&i| {
        let f = &input.fields[i];
        let (name, ty) = (f.column(), f.ty);
        quote_spanned!(span_of(ty)=> #private::KeyColumn {
            name: #name,
            kind: <#ty as #private::PkField>::KIND,
        })
    });
    let desc_tenant = match input.tenant {
        Some(i) => {
            let f = &input.fields[i];
            let (name, ty) = (f.column(), f.ty);
            quote_spanned!(span_of(ty)=> ::core::option::Option::Some(#private::TenantColumn {
                name: #name,
                kind: <#ty as #private::TenantField>::KIND,
            }))
        }
        None => quote!(::core::option::Option::None),
    };
    let desc_encrypted = encrypted_fields(input).map(|(_, f)| {
        let e = f.encrypt.as_ref().expect("encrypted field");
        let field = f.ident.to_string();
        let field = field.trim_start_matches("r#");
        let column = &e.column;
        let inner = e.option_of.unwrap_or(f.ty);
        let span = span_of(inner);
        let (codec, enc, dec) = if e.json {
            (
                quote!(#krate::model::CodecId::Json),
                quote_spanned!(span=> #private::encode_plain_json::<#inner>),
                quote_spanned!(span=> #private::decode_plain_json::<#inner>),
            )
        } else {
            (
                quote_spanned!(span=> <#inner as #krate::FieldCodec>::CODEC),
                quote_spanned!(span=> #private::encode_plain_with::<#inner>),
                quote_spanned!(span=> #private::decode_plain_with::<#inner>),
            )
        };
        let fixed = if e.json {
            quote!(::core::option::Option::None)
        } else {
            quote_spanned!(span=> <#inner as #krate::FieldCodec>::FIXED_LEN)
        };
        let nullable = e.option_of.is_some() && !e.hide_null;
        let (hide_null, pad) = (e.hide_null, e.pad);
        quote! {
            #private::EncryptedColumn {
                field: #field,
                column: #column,
                codec: #codec,
                nullable: #nullable,
                hide_null: #hide_null,
                pad: #pad,
                fixed_len: #fixed,
                encode_plain: #enc,
                decode_plain: #dec,
            }
        }
    });
    let id_not_secret = input.id_not_secret;
    let assemble_plain: Vec<TokenStream> = migrating_fields(input)
        .map(|(f, _)| {
            let name = plaintext_ident(f);
            quote!(#name: ::core::option::Option::None)
        })
        .chain(all_indexes(input).map(|(index, _)| {
            let name = index_ident(index);
            quote!(#name: ::core::option::Option::None)
        }))
        .collect();
    let index_defs: Vec<TokenStream> = all_indexes(input)
        .map(|(index, fs)| {
            let column = index.column.value();
            let field_columns: Vec<String> = fs.iter().map(|f| f.column()).collect();
            let (nfkc, trim, lowercase) = (index.nfkc, index.trim, index.lowercase);
            let custom = match &index.normalize_with {
                Some(path) => quote!(::core::option::Option::Some(#path)),
                None => quote!(::core::option::Option::None),
            };
            let transform = match &index.transform {
                None => quote!(#krate::index::Transform::Identity),
                Some((name, None)) => {
                    let v = format_ident!("{}", name);
                    quote!(#krate::index::Transform::#v)
                }
                Some((name, Some(n))) => {
                    let v = format_ident!("{}", name);
                    quote!(#krate::index::Transform::#v(#n))
                }
            };
            let bits = index.bits.unwrap_or(0);
            let rows = match index.expected_rows {
                Some(n) => quote!(#n),
                None => quote!(#krate::index::DEFAULT_EXPECTED_ROWS),
            };
            let version = index.version.unwrap_or(1);
            quote! {
                #krate::index::IndexColumn {
                    column: #column,
                    fields: &[#(#field_columns),*],
                    normalization: #krate::index::Normalization {
                        nfkc: #nfkc,
                        trim: #trim,
                        lowercase: #lowercase,
                        custom: #custom,
                    },
                    transform: #transform,
                    bits: #bits,
                    expected_rows: #rows,
                    version: #version,
                }
            }
        })
        .collect();
    let index_text_arms: Vec<TokenStream> = all_indexes(input)
        .enumerate()
        .map(|(n, (_, fs))| {
            let parts = fs.iter().map(|f| {
                let e = f.encrypt.as_ref().expect("encrypted field");
                let ident = f.ident;
                let inner = e.option_of.unwrap_or(f.ty);
                let get = quote_spanned!(span_of(inner)=> <#inner as #krate::index::IndexText>::index_text);
                if e.option_of.is_some() {
                    quote!(self.#ident.as_ref().map(|__v| #get(__v)))
                } else {
                    quote!(::core::option::Option::Some(#get(&self.#ident)))
                }
            });
            quote!(#n => ::std::vec![#(#parts),*])
        })
        .collect();
    let migrating: Vec<TokenStream> = migrating_fields(input)
        .map(|(f, plain)| {
            let column = f.column();
            quote!((#column, #plain))
        })
        .collect();

    let encode_arms = encrypted_fields(input).map(|(n, f)| {
        let e = encode_field(f, p);
        quote!(#n => #e)
    });
    let assemble_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        match &f.encrypt {
            Some(e) if e.nullable_sealed() => {
                quote!(#ident: __values.next().flatten())
            }
            Some(_) => {
                let column = f.column();
                quote!(#ident: match __values.next().flatten() {
                    ::core::option::Option::Some(__v) => __v,
                    ::core::option::Option::None => {
                        return ::core::result::Result::Err(#private::missing_value(#column));
                    }
                })
            }
            None => {
                let ty = f.ty;
                quote_spanned!(span_of(ty)=> #ident: <#ty as ::core::clone::Clone>::clone(&self.#ident))
            }
        }
    });

    quote! {
        #[automatically_derived]
        impl #krate::model::Encrypted for #model {
            type Sealed = #sealed;
            type Key = #key_ty;
            type Column = #column;
            const TABLE: &'static str = #table;
            const PRIMARY_KEY: &'static [&'static str] = &[#(#pk_cols),*];
            const TENANT: ::core::option::Option<&'static str> = #tenant_col;
            const COLUMNS: &'static [&'static str] = &[#(#all_cols),*];
            const ENCRYPTED_COLUMNS: &'static [&'static str] = &[#(#enc_cols),*];
            const MIGRATING: &'static [(&'static str, &'static str)] = &[#(#migrating),*];
            const INDEXES: &'static [#krate::index::IndexColumn] =
                <Self as #krate::model::Encrypted>::DESCRIPTION.indexes;

            fn __index_parts(
                &self,
                __index: usize,
            ) -> ::std::vec::Vec<::core::option::Option<::std::borrow::Cow<'_, str>>> {
                match __index {
                    #(#index_text_arms,)*
                    _ => ::std::vec::Vec::new(),
                }
            }
            const DESCRIPTION: &'static #private::ModelDescription = &#private::ModelDescription {
                name: #model_name,
                table: #table,
                key: &[#(#desc_key),*],
                tenant: #desc_tenant,
                encrypted: &[#(#desc_encrypted),*],
                columns: &[#(#all_cols),*],
                id_not_secret: #id_not_secret,
                indexes: &[#(#index_defs),*],
            };

            fn row_id(&self) -> ::core::option::Option<#krate::RowId> {
                #row_id
            }

            fn tenant(&self) -> ::core::option::Option<::std::string::String> {
                #tenant
            }

            fn __encode_field(
                &self,
                __field: usize,
            ) -> #krate::Result<::core::option::Option<#private::PlainBuf>> {
                match __field {
                    #(#encode_arms,)*
                    _ => ::core::result::Result::Err(#private::missing_value("?")),
                }
            }

            fn __assemble(
                &self,
                __values: &mut ::std::vec::IntoIter<::core::option::Option<#krate::Sealed>>,
            ) -> #krate::Result<#sealed> {
                ::core::result::Result::Ok(#sealed { #(#assemble_fields,)* #(#assemble_plain,)* })
            }
        }
    }
}

fn tenant_expr(input: &Input<'_>, p: &Paths) -> TokenStream {
    let krate = &p.krate;
    match input.tenant {
        Some(i) => {
            let f = &input.fields[i];
            let (ident, ty) = (f.ident, f.ty);
            quote_spanned!(span_of(ty)=> <#ty as #krate::model::TenantField>::tenant(&self.#ident))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// The framed plaintext of one encrypted field of `self`:
/// `Result<Option<PlainBuf>>`, reserved once for its final length.
fn encode_field(f: &Field<'_>, p: &Paths) -> TokenStream {
    let (krate, private) = (&p.krate, &p.private);
    let e = f.encrypt.as_ref().expect("encrypted field");
    let ident = f.ident;
    let inner = e.option_of.unwrap_or(f.ty);
    let span = span_of(inner);
    let (hint, encode) = if e.json {
        (
            quote_spanned!(span=> #private::json_len::<#inner>(__v)),
            quote_spanned!(span=> #private::json_encode::<#inner>(__v, __buf.out())?),
        )
    } else {
        (
            quote_spanned!(span=> <#inner as #krate::FieldCodec>::size_hint(__v)),
            quote_spanned!(span=> <#inner as #krate::FieldCodec>::encode(__v, __buf.out())?),
        )
    };
    let framing = framing(f, p);
    let some = quote! {{
        let mut __buf = __FRAME.value(#hint);
        #encode;
        __FRAME.finish(&mut __buf);
        ::core::result::Result::Ok(::core::option::Option::Some(__buf))
    }};
    let body = match (e.option_of.is_some(), e.hide_null) {
        (false, _) => quote!({
            let __v = &self.#ident;
            #some
        }),
        (true, false) => quote!(match &self.#ident {
            ::core::option::Option::Some(__v) => #some,
            ::core::option::Option::None => ::core::result::Result::Ok(::core::option::Option::None),
        }),
        (true, true) => quote!(match &self.#ident {
            ::core::option::Option::Some(__v) => #some,
            ::core::option::Option::None => {
                ::core::result::Result::Ok(::core::option::Option::Some(__FRAME.hidden_null()))
            }
        }),
    };
    quote!({
        const __FRAME: #private::Framing = #framing;
        #body
    })
}

fn sealed_row_impl(input: &Input<'_>, p: &Paths) -> TokenStream {
    let Paths { krate, private, .. } = p;
    let (model, table, sealed) = (input.ident, &input.table, sealed_ident(input));
    let vis = input.vis;
    let row_id = {
        let parts = input.pk.iter().map(|&i| {
            let f = &input.fields[i];
            let (ident, ty) = (f.ident, f.ty);
            quote_spanned!(span_of(ty)=> <#ty as #krate::model::PkField>::pk_part(&self.#ident)?)
        });
        quote!(::core::option::Option::Some(#krate::RowId::composite([#(#parts),*])))
    };
    let tenant = tenant_expr(input, p);
    let first_col = encrypted_fields(input)
        .map(|(_, f)| f.column())
        .next()
        .unwrap_or_default();

    let visits = input.fields.iter().filter_map(|f| {
        let e = f.encrypt.as_ref()?;
        let (ident, column) = (f.ident, f.column());
        Some(if e.nullable_sealed() {
            quote!(if let ::core::option::Option::Some(__v) = &self.#ident { __f(#column, __v); })
        } else {
            quote!(__f(#column, &self.#ident);)
        })
    });

    // The same values as `visits`, in the same order, moved out.
    let takes: Vec<TokenStream> = input
        .fields
        .iter()
        .filter_map(|f| {
            let e = f.encrypt.as_ref()?;
            let (ident, column) = (f.ident, f.column());
            Some(if e.nullable_sealed() {
                quote! {
                    if let ::core::option::Option::Some(__v) = &mut self.#ident {
                        __f(#column, #private::take_sealed(__v));
                    }
                }
            } else {
                quote!(__f(#column, #private::take_sealed(&mut self.#ident));)
            })
        })
        .collect();

    let set_index_arms: Vec<TokenStream> = all_indexes(input)
        .enumerate()
        .map(|(n, (index, _))| {
            let name = index_ident(index);
            quote!(#n => self.#name = __value)
        })
        .collect();
    let open_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        match &f.encrypt {
            Some(_) => {
                let column = f.column();
                let e = open_field(f, table, p);
                quote!(#ident: (#e).map_err(|__e| __fail(#column, __e))?)
            }
            None => quote!(#ident: self.#ident),
        }
    });

    quote! {
        #[automatically_derived]
        impl #krate::model::SealedRow for #sealed {
            type Model = #model;

            fn row_id(&self) -> ::core::option::Option<#krate::RowId> {
                #row_id
            }

            fn tenant(&self) -> ::core::option::Option<::std::string::String> {
                #tenant
            }

            fn for_each_sealed<'__a>(
                &'__a self,
                __f: &mut dyn ::core::ops::FnMut(&'static str, &'__a #krate::Sealed),
            ) {
                #(#visits)*
            }

            fn __set_index(
                &mut self,
                __index: usize,
                __value: ::core::option::Option<#krate::index::BlindIndexValue>,
            ) {
                match __index {
                    #(#set_index_arms,)*
                    _ => { let _ = __value; }
                }
            }

            fn __take_sealed(
                &mut self,
                __f: &mut dyn ::core::ops::FnMut(&'static str, #krate::Sealed),
            ) {
                #(#takes)*
            }

            fn __open_with(
                self,
                __opener: &mut dyn #private::FieldOpener,
                __owner: ::core::option::Option<(
                    #krate::RowId,
                    ::core::option::Option<::std::string::String>,
                )>,
            ) -> ::core::result::Result<#model, #private::OpenFailure> {
                let (__row_id, __tenant) = match __owner {
                    ::core::option::Option::Some(__owner) => __owner,
                    ::core::option::Option::None => {
                        let ::core::option::Option::Some(__row_id) =
                            <Self as #krate::model::SealedRow>::row_id(&self)
                        else {
                            return ::core::result::Result::Err(#private::OpenFailure {
                                column: #first_col,
                                row: ::core::option::Option::None,
                                error: #krate::model::missing_row_id(#table, #first_col),
                            });
                        };
                        (__row_id, <Self as #krate::model::SealedRow>::tenant(&self))
                    }
                };
                let __fail = |column: &'static str, error: #krate::Error| #private::OpenFailure {
                    column,
                    row: ::core::option::Option::Some(::core::clone::Clone::clone(&__row_id)),
                    error,
                };
                ::core::result::Result::Ok(#model { #(#open_fields,)* })
            }
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #sealed {
            /// Decrypt this row into the model.
            #vis async fn open(self, __envelope: &#krate::Envelope) -> #krate::Result<#model> {
                <Self as #krate::model::SealedRow>::open(self, __envelope).await
            }
        }
    }
}

/// Expression opening `self.<field>` (moved) into the field's value:
/// `Result<FieldType>`. Needs `__opener`, `__row_id`, `__tenant`.
fn open_field(f: &Field<'_>, table: &str, p: &Paths) -> TokenStream {
    let (krate, private) = (&p.krate, &p.private);
    let e = f.encrypt.as_ref().expect("encrypted field");
    let ident = f.ident;
    let column = f.column();
    let inner = e.option_of.unwrap_or(f.ty);
    let span = span_of(inner);
    let decode = if e.json {
        quote_spanned!(span=> #private::json_decode::<#inner>(&__b))
    } else {
        quote_spanned!(span=> <#inner as #krate::FieldCodec>::decode_owned(__b))
    };
    let framing = framing(f, p);
    let open = |value: TokenStream| {
        quote! {{
            const __FRAME: #private::Framing = #framing;
            let __ctx = #krate::Context {
                table: #table,
                column: #column,
                row: &__row_id,
                tenant: __tenant.as_deref(),
            };
            #private::open_field(__opener, &__ctx, #value, __FRAME)
        }}
    };
    // One stored value (a `Sealed`) opened and decoded into the field's value;
    // a hidden NULL is `None` with `hide_null`, an error otherwise.
    let option = e.option_of.is_some();
    let decoded = |value: TokenStream| {
        let open = open(value);
        let some = if option {
            quote!((#decode).map(::core::option::Option::Some))
        } else {
            quote!(#decode)
        };
        let hidden_null = if option && e.hide_null {
            quote!(::core::result::Result::Ok(::core::option::Option::None))
        } else {
            quote!(::core::result::Result::Err(#private::unexpected_null(#column)))
        };
        quote!(#open.and_then(|__b| match __b {
            ::core::option::Option::Some(__b) => #some,
            ::core::option::Option::None => #hidden_null,
        }))
    };
    if let Some(plain_col) = e.migrating_from.as_deref() {
        // The encrypted value when present (an error if it does not open:
        // never a fallback), else the plaintext column, else NULL.
        let opened = decoded(quote!(__v));
        let plain = plaintext_ident(f);
        let unwrap_json = if e.json { quote!(.0) } else { quote!() };
        let from_plain = if option {
            quote!(::core::result::Result::Ok(self.#plain.map(|__p| __p #unwrap_json)))
        } else {
            quote!(match self.#plain {
                ::core::option::Option::Some(__p) => ::core::result::Result::Ok(__p #unwrap_json),
                ::core::option::Option::None => {
                    ::core::result::Result::Err(#private::migrating_null(#column, #plain_col))
                }
            })
        };
        return quote!(match self.#ident {
            ::core::option::Option::Some(__v) => #opened,
            ::core::option::Option::None => #from_plain,
        });
    }
    if e.nullable_sealed() {
        // SQL NULL is `None`.
        let opened = decoded(quote!(__v));
        quote!(match self.#ident {
            ::core::option::Option::Some(__v) => #opened,
            ::core::option::Option::None => ::core::result::Result::Ok(::core::option::Option::None),
        })
    } else {
        decoded(quote!(self.#ident))
    }
}

/// `impl<DB: Dialect> Table<DB>`: the binds, for every database whose types
/// fit the clear fields.
fn table_impl(input: &Input<'_>, p: &Paths) -> TokenStream {
    let Paths { krate, sqlx, .. } = p;
    let (model, sealed) = (input.ident, sealed_ident(input));
    let model_name = model.to_string();
    let db = quote!(<__DB as #sqlx::Database>);
    let clear: Vec<(usize, &Field<'_>)> = input
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.encrypt.is_none())
        .collect();
    let bounds = clear.iter().map(|(_, f)| {
        let ty = f.ty;
        quote_spanned!(span_of(ty)=> #ty: for<'__q> #sqlx::Encode<'__q, __DB> + #sqlx::Type<__DB>)
    });
    let arms = clear.iter().map(|(i, f)| {
        let ident = f.ident;
        quote!(#i => #sqlx::Arguments::add(__args, &self.#ident))
    });
    let bind_key = if input.pk.len() == 1 {
        quote!(#sqlx::Arguments::add(__args, __key))
    } else {
        let parts = (0..input.pk.len()).map(syn::Index::from);
        quote!(#(#sqlx::Arguments::add(__args, &__key.#parts)?;)* ::core::result::Result::Ok(()))
    };
    quote! {
        #[automatically_derived]
        impl<__DB: #krate::model::Dialect> #krate::model::Table<__DB> for #model
        where
            #(#bounds,)*
            #sealed: for<'__r> #sqlx::FromRow<'__r, #db::Row>,
        {
            fn bind_clear(
                &self,
                __column: usize,
                __args: &mut #db::Arguments,
            ) -> ::core::result::Result<(), #krate::error::BoxError> {
                match __column {
                    #(#arms,)*
                    _ => ::core::result::Result::Err(::std::format!(
                        "column {} of {} is not a clear column", __column, #model_name
                    ).into()),
                }
            }

            fn bind_key(
                __key: &<Self as #krate::model::Encrypted>::Key,
                __args: &mut #db::Arguments,
            ) -> ::core::result::Result<(), #krate::error::BoxError> {
                #bind_key
            }

            fn sealed_from_row(
                __row: &#db::Row,
            ) -> ::core::result::Result<#sealed, #sqlx::Error> {
                <#sealed as #sqlx::FromRow<'_, #db::Row>>::from_row(__row)
            }
        }
    }
}

/// The model's one-call methods (delegating to `sqlx_envelope::model::table`)
/// and the per-field sealers.
fn inherent_methods(input: &Input<'_>, p: &Paths) -> TokenStream {
    let Paths { krate, sqlx, .. } = p;
    let (model, vis, column) = (input.ident, input.vis, column_ident(input));
    let table = &input.table;
    let exec = quote!(<__E as #sqlx::Executor<'__c>>::Database);
    let where_clause = quote! {
        where
            __E: #sqlx::Executor<'__c>,
            #exec: #krate::model::Dialect,
            Self: #krate::model::Table<#exec>,
    };
    let field_sealers = encrypted_fields(input).map(|(n, f)| {
        let ident = f.ident;
        let name = format_ident!(
            "seal_{}",
            ident.to_string().trim_start_matches("r#"),
            span = ident.span()
        );
        let ty = sealed_type(f);
        let e = f.encrypt.as_ref().expect("encrypted field");
        let column = f.column();
        let take = if e.nullable_sealed() {
            quote!(::core::result::Result::Ok(__v))
        } else {
            quote!(__v.ok_or_else(|| #krate::model::__private::missing_value(#column)))
        };
        let doc = format!(
            "Encrypt only `{ident}`, bound to this row, for an `UPDATE` of column `{column}` that \
             `update_fields(&[{column_enum}::...])` cannot express.",
            column_enum = column
        );
        quote! {
            #[doc = #doc]
            #vis async fn #name(&self, __envelope: &#krate::Envelope) -> #krate::Result<#ty> {
                let __v = #krate::model::batch::seal_fields(__envelope, ::core::slice::from_ref(self), &[#n])
                    .await?
                    .pop()
                    .flatten();
                #take
            }
        }
    });
    let finders = all_indexes(input).map(|(index, fs)| {
        let column = index.column.value();
        // `find_by_<field>` for a field's only index; `find_by_<index column>`
        // for a compound index and for each index of a field with several
        // (an index-key rotation).
        let single = fs.len() == 1
            && input
                .indexes
                .iter()
                .filter(|i| i.fields.len() == 1 && std::ptr::eq(&input.fields[i.fields[0]], fs[0]))
                .count()
                == 1;
        let name = if single {
            format_ident!(
                "find_by_{}",
                fs[0].ident.to_string().trim_start_matches("r#"),
                span = fs[0].ident.span()
            )
        } else {
            format_ident!("find_by_{}", column, span = index.column.span())
        };
        let params: Vec<syn::Ident> = fs
            .iter()
            .map(|f| format_ident!("__{}", f.ident.to_string().trim_start_matches("r#")))
            .collect();
        let names: Vec<String> = fs.iter().map(|f| format!("`{}`", f.ident)).collect();
        let doc = format!(
            "The rows of `{table}` whose {} equal the given values (each prepared as blind index \
             `{column}` says: normalised, transformed; a non-text field in its text form), found \
             through the index and opened; a truncated index's false positives are dropped \
             before returning.",
            names.join(", ")
        );
        let (tenant_param, tenant_arg) = if input.tenant.is_some() {
            (
                quote!(__tenant: &str,),
                quote!(::core::option::Option::Some(__tenant)),
            )
        } else {
            (quote!(), quote!(::core::option::Option::None))
        };
        quote! {
            #[doc = #doc]
            #vis async fn #name<'__c, __E>(
                __envelope: &#krate::Envelope,
                __executor: __E,
                #tenant_param
                #(#params: &str,)*
            ) -> #krate::Result<::std::vec::Vec<Self>>
            #where_clause
            {
                #krate::model::table::find_by_index(
                    __envelope, __executor, #column, #tenant_arg, &[#(#params),*],
                )
                .await
            }
        }
    });
    let insert_doc = format!(
        "Seal this row and `INSERT` it into `{table}` (one `seal_many` call, one statement)."
    );
    let insert_all_doc = format!(
        "Seal `models` and `INSERT` them into `{table}` in one statement (see \
         `sqlx_envelope::model::table::insert_all` for the limit on rows per statement)."
    );
    let update_doc = format!(
        "Seal every encrypted field anew and `UPDATE` every column of this row in `{table}` but \
         the primary key. `Error::Query` with `sqlx::Error::RowNotFound` when the row does not exist."
    );
    let update_fields_doc = format!(
        "`UPDATE` only `columns` of this row in `{table}`, sealing only the encrypted ones. The \
         statement also matches the tenant, so values never land in another tenant's row. \
         `Error::Query` with `sqlx::Error::RowNotFound` when the row does not exist."
    );
    let fetch_doc = format!(
        "`SELECT` the row of `{table}` with primary key `key` and open it; `None` if there is none."
    );
    quote! {
        #[automatically_derived]
        #[allow(dead_code)]
        impl #model {
            #[doc = #insert_doc]
            #vis async fn insert<'__c, __E>(
                &self,
                __envelope: &#krate::Envelope,
                __executor: __E,
            ) -> #krate::Result<()>
            #where_clause
            {
                #krate::model::table::insert(__envelope, __executor, self).await
            }

            #[doc = #insert_all_doc]
            #vis async fn insert_all<'__c, __E>(
                __envelope: &#krate::Envelope,
                __executor: __E,
                __models: &[Self],
            ) -> #krate::Result<()>
            #where_clause
            {
                #krate::model::table::insert_all(__envelope, __executor, __models).await
            }

            #[doc = #update_doc]
            #vis async fn update<'__c, __E>(
                &self,
                __envelope: &#krate::Envelope,
                __executor: __E,
            ) -> #krate::Result<()>
            #where_clause
            {
                #krate::model::table::update(__envelope, __executor, self).await
            }

            #[doc = #update_fields_doc]
            #vis async fn update_fields<'__c, __E>(
                &self,
                __envelope: &#krate::Envelope,
                __executor: __E,
                __columns: &[#column],
            ) -> #krate::Result<()>
            #where_clause
            {
                #krate::model::table::update_fields(__envelope, __executor, self, __columns).await
            }

            #[doc = #fetch_doc]
            #vis async fn fetch_by_key<'__c, __E>(
                __envelope: &#krate::Envelope,
                __executor: __E,
                __key: &<Self as #krate::model::Encrypted>::Key,
            ) -> #krate::Result<::core::option::Option<Self>>
            #where_clause
            {
                #krate::model::table::fetch_by_key(__envelope, __executor, __key).await
            }

            #(#field_sealers)*

            #(#finders)*
        }
    }
}

/// Every blind index with the fields it hashes (the order of `INDEXES`).
fn all_indexes<'i, 'a>(
    input: &'i Input<'a>,
) -> impl Iterator<Item = (&'i crate::attr::IndexAttr, Vec<&'i Field<'a>>)> + 'i {
    input.indexes.iter().map(|index| {
        (
            &index.attr,
            index.fields.iter().map(|&i| &input.fields[i]).collect(),
        )
    })
}

/// The sealed row's field holding a blind index's value.
fn index_ident(index: &crate::attr::IndexAttr) -> syn::Ident {
    syn::Ident::new(&index.column.value(), index.column.span())
}

/// Encrypted fields migrating from a plaintext column, with that column.
fn migrating_fields<'i, 'a>(
    input: &'i Input<'a>,
) -> impl Iterator<Item = (&'i Field<'a>, &'i str)> + 'i {
    input.fields.iter().filter_map(|f| {
        let plain = f.encrypt.as_ref()?.migrating_from.as_deref()?;
        Some((f, plain))
    })
}

/// The sealed row's field holding a migrating field's plaintext.
fn plaintext_ident(f: &Field<'_>) -> syn::Ident {
    format_ident!(
        "{}_plaintext",
        f.ident.to_string().trim_start_matches("r#"),
        span = f.ident.span()
    )
}

/// `Option<T>` (`Option<sqlx::types::Json<T>>` for a JSON field) for a
/// migrating field's plaintext column, `T` the field's (inner) type.
fn plaintext_type(f: &Field<'_>, p: &Paths) -> TokenStream {
    let sqlx = &p.sqlx;
    let e = f.encrypt.as_ref().expect("encrypted field");
    let inner = e.option_of.unwrap_or(f.ty);
    if e.json {
        quote_spanned!(span_of(inner)=> ::core::option::Option<#sqlx::types::Json<#inner>>)
    } else {
        quote_spanned!(span_of(inner)=> ::core::option::Option<#inner>)
    }
}

/// `Sealed` or `Option<Sealed>` for an encrypted field, the field's type otherwise.
fn sealed_type(f: &Field<'_>) -> TokenStream {
    match &f.encrypt {
        Some(e) if e.nullable_sealed() => {
            quote!(::core::option::Option<::sqlx_envelope::Sealed>)
        }
        Some(_) => quote!(::sqlx_envelope::Sealed),
        None => {
            let ty = f.ty;
            quote!(#ty)
        }
    }
}
