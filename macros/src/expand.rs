//! Code generation: the sealed row type and the trait impls.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

use crate::ast::{Field, Input, span_of};

pub fn expand(input: &Input<'_>) -> TokenStream {
    let krate = quote!(::sqlx_envelope);
    let private = quote!(#krate::model::__private);
    let sqlx = quote!(#private::sqlx);
    let model = input.ident;
    let vis = input.vis;
    let sealed = format_ident!("{}Sealed", model, span = model.span());
    let table = &input.table;
    let model_name = model.to_string();

    // The sealed row: ciphertext for encrypted fields, the rest as is.
    let sealed_fields = input.fields.iter().map(|f| {
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
    let sealed_doc = format!(
        "The sealed row of [`{model_name}`]: what table `{table}` stores. Encrypted fields hold \
         ciphertext; bind this type in queries and read it with `sqlx::FromRow` or `query_as!`, \
         then open it with the envelope."
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
        let span = span_of(f.ty);
        quote_spanned!(span=> #ty: #sqlx::Decode<'__r, <__R as #sqlx::Row>::Database> + #sqlx::Type<<__R as #sqlx::Row>::Database>)
    });
    let from_row_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        let column = f.column();
        quote!(#ident: #sqlx::Row::try_get(__row, #column)?)
    });

    let pk_parts = |on: TokenStream| {
        let parts = input.pk.iter().map(|&i| {
            let f = &input.fields[i];
            let ident = f.ident;
            let (span, ty) = (span_of(f.ty), f.ty);
            quote_spanned!(span=> <#ty as #krate::model::PkField>::pk_part(&#on.#ident)?)
        });
        quote!(::core::option::Option::Some(#krate::RowId::composite([#(#parts),*])))
    };
    let row_id_model = pk_parts(quote!(self));
    let row_id_sealed = pk_parts(quote!(self));
    let tenant_expr = match input.tenant {
        Some(i) => {
            let f = &input.fields[i];
            let (ident, ty) = (f.ident, f.ty);
            quote_spanned!(span_of(ty)=> <#ty as #krate::model::TenantField>::tenant(&self.#ident))
        }
        None => quote!(::core::option::Option::None),
    };
    let pk_cols = input.pk.iter().map(|&i| input.fields[i].column());
    let tenant_col = match input.tenant {
        Some(i) => {
            let c = input.fields[i].column();
            quote!(::core::option::Option::Some(#c))
        }
        None => quote!(::core::option::Option::None),
    };
    let all_cols = input.fields.iter().map(Field::column);
    let enc_cols: Vec<String> = input
        .fields
        .iter()
        .filter_map(|f| f.encrypt.as_ref().map(|e| e.column.clone()))
        .collect();
    let first_col = &enc_cols[0];

    let prologue = |row_of: TokenStream| {
        quote! {
            let __row_id = #row_of.ok_or_else(|| #krate::model::missing_row_id(#table, #first_col))?;
            let __tenant: ::core::option::Option<::std::string::String> = #tenant_expr;
        }
    };
    let seal_prologue = prologue(quote!(<Self as #krate::model::Encrypted>::row_id(self)));
    let open_prologue = prologue(quote!(<Self as #krate::model::SealedRow>::row_id(&self)));

    // Model → sealed row.
    let seal_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        match &f.encrypt {
            Some(_) => {
                let e = seal_expr(f, table, &krate, &private);
                quote!(#ident: #e)
            }
            None => {
                let span = span_of(f.ty);
                let ty = f.ty;
                quote_spanned!(span=> #ident: <#ty as ::core::clone::Clone>::clone(&self.#ident))
            }
        }
    });

    // Sealed row → model.
    let open_fields = input.fields.iter().map(|f| {
        let ident = f.ident;
        match &f.encrypt {
            Some(_) => {
                let e = open_expr(f, table, &krate, &private);
                quote!(#ident: #e)
            }
            None => quote!(#ident: self.#ident),
        }
    });

    let sealed_values = input.fields.iter().filter_map(|f| {
        let e = f.encrypt.as_ref()?;
        let ident = f.ident;
        Some(if e.option_of.is_some() && !e.hide_null {
            quote!(if let ::core::option::Option::Some(__v) = &self.#ident { __values.push(__v); })
        } else {
            quote!(__values.push(&self.#ident);)
        })
    });

    let field_sealers = input
        .fields
        .iter()
        .filter(|f| f.encrypt.is_some())
        .map(|f| {
            let ident = f.ident;
            let name = format_ident!(
                "seal_{}",
                ident.to_string().trim_start_matches("r#"),
                span = ident.span()
            );
            let ty = sealed_type(f);
            let e = seal_expr(f, table, &krate, &private);
            let doc = format!(
                "Encrypt only `{ident}`, bound to this row, for an `UPDATE` of column `{}`.",
                f.column()
            );
            quote! {
                #[doc = #doc]
                #vis async fn #name(&self, __envelope: &#krate::Envelope) -> #krate::Result<#ty> {
                    #seal_prologue
                    ::core::result::Result::Ok(#e)
                }
            }
        });

    quote! {
        #[doc = #sealed_doc]
        #vis struct #sealed {
            #(#sealed_fields,)*
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
        {
            fn from_row(__row: &'__r __R) -> ::core::result::Result<Self, #sqlx::Error> {
                ::core::result::Result::Ok(Self { #(#from_row_fields,)* })
            }
        }

        #[automatically_derived]
        impl #krate::model::Encrypted for #model {
            type Sealed = #sealed;
            const TABLE: &'static str = #table;
            const PRIMARY_KEY: &'static [&'static str] = &[#(#pk_cols),*];
            const TENANT: ::core::option::Option<&'static str> = #tenant_col;
            const COLUMNS: &'static [&'static str] = &[#(#all_cols),*];
            const ENCRYPTED_COLUMNS: &'static [&'static str] = &[#(#enc_cols),*];

            fn row_id(&self) -> ::core::option::Option<#krate::RowId> {
                #row_id_model
            }

            fn tenant(&self) -> ::core::option::Option<::std::string::String> {
                #tenant_expr
            }

            async fn seal(&self, __envelope: &#krate::Envelope) -> #krate::Result<#sealed> {
                #seal_prologue
                ::core::result::Result::Ok(#sealed { #(#seal_fields,)* })
            }
        }

        #[automatically_derived]
        impl #krate::model::SealedRow for #sealed {
            type Model = #model;

            fn row_id(&self) -> ::core::option::Option<#krate::RowId> {
                #row_id_sealed
            }

            fn tenant(&self) -> ::core::option::Option<::std::string::String> {
                #tenant_expr
            }

            fn sealed_values(&self) -> ::std::vec::Vec<&#krate::Sealed> {
                let mut __values = ::std::vec::Vec::new();
                #(#sealed_values)*
                __values
            }

            fn open_with(self, __keys: &#krate::model::KeyMap) -> #krate::Result<#model> {
                #open_prologue
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

        #[automatically_derived]
        #[allow(dead_code)]
        impl #model {
            #(#field_sealers)*
        }
    }
}

/// `Sealed` or `Option<Sealed>` for an encrypted field, the field's type otherwise.
fn sealed_type(f: &Field<'_>) -> TokenStream {
    match &f.encrypt {
        Some(e) if e.option_of.is_some() && !e.hide_null => {
            quote!(::core::option::Option<::sqlx_envelope::Sealed>)
        }
        Some(_) => quote!(::sqlx_envelope::Sealed),
        None => {
            let ty = f.ty;
            quote!(#ty)
        }
    }
}

fn ctx(f: &Field<'_>, krate: &TokenStream, table: &str) -> TokenStream {
    let column = f.column();
    quote! {
        #krate::Context {
            table: #table,
            column: #column,
            row: &__row_id,
            tenant: __tenant.as_deref(),
        }
    }
}

/// Expression sealing `self.<field>` (needs `__envelope`, `__row_id`, `__tenant`).
fn seal_expr(
    f: &Field<'_>,
    table: &str,
    krate: &TokenStream,
    private: &TokenStream,
) -> TokenStream {
    let e = f.encrypt.as_ref().expect("encrypted field");
    let ident = f.ident;
    let inner = e.option_of.unwrap_or(f.ty);
    let span = span_of(inner);
    let encode = if e.json {
        quote_spanned!(span=> #private::json_encode::<#inner>(__v, &mut *__buf)?)
    } else {
        quote_spanned!(span=> <#inner as #krate::FieldCodec>::encode(__v, &mut *__buf)?)
    };
    let pad = e.pad;
    let ctx = ctx(f, krate, table);
    let seal = quote! {
        #private::seal_bytes(__envelope, &#ctx, __buf, #pad).await?
    };
    let new_buf = quote!(let mut __buf = #private::Zeroizing::new(::std::vec::Vec::<u8>::new()););
    match (e.option_of.is_some(), e.hide_null) {
        (false, _) => quote!({
            #new_buf
            let __v = &self.#ident;
            #encode;
            #seal
        }),
        (true, false) => quote!(match &self.#ident {
            ::core::option::Option::Some(__v) => {
                #new_buf
                #encode;
                ::core::option::Option::Some(#seal)
            }
            ::core::option::Option::None => ::core::option::Option::None,
        }),
        (true, true) => quote!({
            #new_buf
            match &self.#ident {
                ::core::option::Option::Some(__v) => {
                    __buf.push(1u8);
                    #encode;
                }
                ::core::option::Option::None => __buf.push(0u8),
            }
            #seal
        }),
    }
}

/// Expression opening `self.<field>` (needs `__keys`, `__row_id`, `__tenant`).
fn open_expr(
    f: &Field<'_>,
    table: &str,
    krate: &TokenStream,
    private: &TokenStream,
) -> TokenStream {
    let e = f.encrypt.as_ref().expect("encrypted field");
    let ident = f.ident;
    let inner = e.option_of.unwrap_or(f.ty);
    let span = span_of(inner);
    let decode = |bytes: TokenStream| {
        if e.json {
            quote_spanned!(span=> #private::json_decode::<#inner>(#bytes)?)
        } else {
            quote_spanned!(span=> <#inner as #krate::FieldCodec>::decode(#bytes)?)
        }
    };
    let pad = e.pad;
    let ctx = ctx(f, krate, table);
    let open = |value: TokenStream| quote!(#private::open_bytes(__keys, &#ctx, #value, #pad)?);
    match (e.option_of.is_some(), e.hide_null) {
        (false, _) => {
            let open = open(quote!(&self.#ident));
            let decode = decode(quote!(&__pt));
            quote!({
                let __pt = #open;
                #decode
            })
        }
        (true, false) => {
            let open = open(quote!(__v));
            let decode = decode(quote!(&__pt));
            quote!(match &self.#ident {
                ::core::option::Option::Some(__v) => {
                    let __pt = #open;
                    ::core::option::Option::Some(#decode)
                }
                ::core::option::Option::None => ::core::option::Option::None,
            })
        }
        (true, true) => {
            let open = open(quote!(&self.#ident));
            let decode = decode(quote!(__b));
            quote!({
                let __pt = #open;
                match #private::split_marker(&__pt)? {
                    ::core::option::Option::Some(__b) => ::core::option::Option::Some(#decode),
                    ::core::option::Option::None => ::core::option::Option::None,
                }
            })
        }
    }
}
