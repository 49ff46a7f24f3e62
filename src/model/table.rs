//! A model's own table: insert, update and fetch by primary key in one call.
//!
//! Binding a sealed row by hand is where encrypted models go wrong: seven
//! columns are seven binds, and two swapped binds compile, insert, and then
//! fail on every read. So the derive writes the binds ([`Table`], one generic
//! implementation for every database whose Rust types fit), and the SQL is
//! written here once for every driver, through a small [`Dialect`] trait
//! (identifier quoting, placeholders, NULL-safe equality), implemented for
//! PostgreSQL, MySQL/MariaDB and SQLite behind their features.
//!
//! Every write seals the row's values in one [`Envelope::seal_many`] call and
//! sends one statement; every read opens through the envelope before it
//! returns, so plaintext never reaches the database and ciphertext never
//! reaches the application. The sealed row stays the only type sqlx sees.
//!
//! Table and column names are quoted, so they are used exactly as written in
//! the model (a `.` in a table name separates a schema: `app.patients`).

use sqlx::{Arguments, Database, Executor, IntoArguments};

use super::{Column, Encrypted, batch};
use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::sealed::Sealed;

/// What the SQL of [`Table`] needs to know about a database. Implemented for
/// `sqlx::Postgres`, `sqlx::MySql` and `sqlx::Sqlite` (features `postgres`,
/// `mysql`, `sqlite`).
pub trait Dialect: Database<Arguments: IntoArguments<Self>> {
    /// Append `name` as a quoted identifier (each `.`-separated part).
    fn push_ident(sql: &mut String, name: &str);
    /// Append the placeholder of bind parameter `n` (from 1).
    fn push_param(sql: &mut String, n: usize);
    /// The operator for "equal, and NULL equals NULL".
    const NULL_SAFE_EQ: &'static str;
    /// The most bind parameters one statement may carry.
    const MAX_PARAMS: usize;
    /// How many rows a statement matched.
    fn rows_affected(result: &Self::QueryResult) -> u64;
    /// Bind a stored value (`None`: SQL NULL).
    fn bind_sealed(args: &mut Self::Arguments, value: Option<&Sealed>) -> Result<(), BoxError>;
    /// Bind a blind-index value (`None`: SQL NULL).
    fn bind_index(
        args: &mut Self::Arguments,
        value: Option<&crate::index::BlindIndexValue>,
    ) -> Result<(), BoxError>;
}

fn push_quoted(sql: &mut String, name: &str, quote: char) {
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            sql.push('.');
        }
        sql.push(quote);
        for c in part.chars() {
            if c == quote {
                sql.push(quote);
            }
            sql.push(c);
        }
        sql.push(quote);
    }
}

macro_rules! dialect {
    ($feature:literal, $db:ty, $quote:literal, $eq:literal, $max:expr, |$sql:ident, $n:ident| $param:block) => {
        #[cfg(feature = $feature)]
        impl Dialect for $db {
            fn push_ident(sql: &mut String, name: &str) {
                push_quoted(sql, name, $quote);
            }
            fn push_param($sql: &mut String, $n: usize) $param
            const NULL_SAFE_EQ: &'static str = $eq;
            const MAX_PARAMS: usize = $max;
            fn rows_affected(result: &Self::QueryResult) -> u64 {
                result.rows_affected()
            }
            fn bind_sealed(
                args: &mut Self::Arguments,
                value: Option<&Sealed>,
            ) -> Result<(), BoxError> {
                args.add(value)
            }
            fn bind_index(
                args: &mut Self::Arguments,
                value: Option<&crate::index::BlindIndexValue>,
            ) -> Result<(), BoxError> {
                args.add(value)
            }
        }
    };
}

dialect!(
    "postgres",
    sqlx::Postgres,
    '"',
    "IS NOT DISTINCT FROM",
    65_535,
    |sql, n| {
        use std::fmt::Write;
        let _ = write!(sql, "${n}");
    }
);
dialect!("mysql", sqlx::MySql, '`', "<=>", 65_535, |sql, _n| {
    sql.push('?');
});
dialect!("sqlite", sqlx::Sqlite, '"', "IS", 32_766, |sql, _n| {
    sql.push('?');
});

/// A model whose rows can be written to and read from its table on database
/// `DB`. Implemented by `#[derive(Encrypted)]` for every [`Dialect`] whose
/// sqlx types fit the model's clear fields; the methods are the generated
/// binds, and the model's inherent `insert`, `update`, `update_fields` and
/// `fetch_by_key` (and the functions of this module) use them.
pub trait Table<DB: Dialect>: Encrypted {
    /// Bind the value of clear (not encrypted) column `column` (its index in
    /// [`Encrypted::COLUMNS`]).
    fn bind_clear(&self, column: usize, args: &mut DB::Arguments) -> Result<(), BoxError>;

    /// Bind the primary key, part by part in key order.
    fn bind_key(key: &Self::Key, args: &mut DB::Arguments) -> Result<(), BoxError>;

    /// Read a sealed row.
    fn sealed_from_row(row: &DB::Row) -> std::result::Result<Self::Sealed, sqlx::Error>;
}

fn query_error<M: Encrypted>(source: sqlx::Error) -> Error {
    Error::Query {
        model: M::DESCRIPTION.name,
        source,
    }
}

fn encode_error<M: Encrypted>(source: BoxError) -> Error {
    query_error::<M>(sqlx::Error::Encode(source))
}

/// The position in `DESCRIPTION.encrypted` of column `column`, if encrypted.
fn encrypted_index<M: Encrypted>(column: usize) -> Option<usize> {
    let name = M::COLUMNS[column];
    M::DESCRIPTION
        .encrypted
        .iter()
        .position(|c| c.column == name)
}

/// Bind column `column` of `model`: from `sealed` (the model's sealed values,
/// in `DESCRIPTION.encrypted` order) if encrypted.
fn bind_column<M: Table<DB>, DB: Dialect>(
    model: &M,
    column: usize,
    sealed: &[Option<Sealed>],
    args: &mut DB::Arguments,
) -> Result<()> {
    match encrypted_index::<M>(column) {
        Some(e) => DB::bind_sealed(args, sealed[e].as_ref()),
        None => model.bind_clear(column, args),
    }
    .map_err(encode_error::<M>)
}

/// `SELECT <every column the sealed row reads> FROM <table>`: the model's
/// columns, the plaintext columns of migrating fields and the blind indexes.
fn select_from<M: Encrypted, DB: Dialect>() -> String {
    let mut sql = String::from("SELECT ");
    let plain = M::MIGRATING.iter().map(|(_, p)| p);
    let index_columns = M::INDEXES.iter().map(|i| &i.column);
    for (i, name) in M::COLUMNS
        .iter()
        .chain(plain)
        .chain(index_columns)
        .enumerate()
    {
        if i > 0 {
            sql.push_str(", ");
        }
        DB::push_ident(&mut sql, name);
    }
    sql.push_str(" FROM ");
    DB::push_ident(&mut sql, M::TABLE);
    sql
}

fn is_key<M: Encrypted>(column: usize) -> bool {
    M::PRIMARY_KEY.contains(&M::COLUMNS[column])
}

/// `col = $n AND ...` for the key (and the tenant, null-safe), binding from
/// `model`.
fn push_where<M: Table<DB>, DB: Dialect>(
    sql: &mut String,
    model: &M,
    with_tenant: bool,
    args: &mut DB::Arguments,
) -> Result<()> {
    sql.push_str(" WHERE ");
    let mut first = true;
    for (i, name) in M::COLUMNS.iter().enumerate() {
        let tenant = with_tenant && M::TENANT == Some(*name);
        if !is_key::<M>(i) && !tenant {
            continue;
        }
        if !first {
            sql.push_str(" AND ");
        }
        first = false;
        DB::push_ident(sql, name);
        sql.push(' ');
        sql.push_str(if tenant { DB::NULL_SAFE_EQ } else { "=" });
        sql.push(' ');
        model.bind_clear(i, args).map_err(encode_error::<M>)?;
        DB::push_param(sql, args.len());
    }
    Ok(())
}

async fn execute<'c, M, E>(
    executor: E,
    sql: String,
    args: <E::Database as Database>::Arguments,
) -> Result<u64>
where
    M: Encrypted,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let result = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .execute(executor)
        .await
        .map_err(query_error::<M>)?;
    Ok(<E::Database as Dialect>::rows_affected(&result))
}

/// `INSERT INTO table (columns...) VALUES (...), (...)` for `models`, every
/// value sealed in one [`Envelope::seal_many`] call, in one statement.
/// Refused with [`Error::Config`] when the batch needs more bind parameters
/// than the database allows in one statement ([`Dialect::MAX_PARAMS`]).
pub async fn insert_all<'c, M, E>(envelope: &Envelope, executor: E, models: &[M]) -> Result<()>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let columns = M::COLUMNS.len();
    let indexes = M::INDEXES.len();
    if models.is_empty() {
        return Ok(());
    }
    if models.len() * (columns + indexes) > <E::Database as Dialect>::MAX_PARAMS {
        return Err(Error::Config(format!(
            "inserting {} rows of {} needs {} bind parameters; this database allows {} per statement: insert in smaller batches",
            models.len(),
            M::DESCRIPTION.name,
            models.len() * (columns + indexes),
            <E::Database as Dialect>::MAX_PARAMS
        )));
    }
    let fields: Vec<usize> = (0..M::DESCRIPTION.encrypted.len()).collect();
    let sealed = batch::seal_fields(envelope, models, &fields).await?;
    let index_values = batch::index_values(envelope, models).await?;
    let mut sql = String::from("INSERT INTO ");
    <E::Database as Dialect>::push_ident(&mut sql, M::TABLE);
    sql.push_str(" (");
    let index_columns = M::INDEXES.iter().map(|i| &i.column);
    for (i, name) in M::COLUMNS.iter().chain(index_columns).enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        <E::Database as Dialect>::push_ident(&mut sql, name);
    }
    sql.push_str(") VALUES ");
    let mut args = <E::Database as Database>::Arguments::default();
    let per_row = fields.len();
    for (r, model) in models.iter().enumerate() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for i in 0..columns {
            if i > 0 {
                sql.push_str(", ");
            }
            bind_column(model, i, &sealed[r * per_row..(r + 1) * per_row], &mut args)?;
            <E::Database as Dialect>::push_param(&mut sql, args.len());
        }
        for value in &index_values[r * indexes..(r + 1) * indexes] {
            sql.push_str(", ");
            <E::Database as Dialect>::bind_index(&mut args, value.as_ref())
                .map_err(encode_error::<M>)?;
            <E::Database as Dialect>::push_param(&mut sql, args.len());
        }
        sql.push(')');
    }
    execute::<M, E>(executor, sql, args).await?;
    Ok(())
}

/// `INSERT` one model (see [`insert_all`]).
pub async fn insert<'c, M, E>(envelope: &Envelope, executor: E, model: &M) -> Result<()>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    insert_all(envelope, executor, std::slice::from_ref(model)).await
}

/// `UPDATE` every column but the primary key, every encrypted value sealed
/// anew (one [`Envelope::seal_many`] call). Fails with [`Error::Query`]
/// (`sqlx::Error::RowNotFound`) when no row has the model's key.
pub async fn update<'c, M, E>(envelope: &Envelope, executor: E, model: &M) -> Result<()>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let columns: Vec<usize> = (0..M::COLUMNS.len()).filter(|&i| !is_key::<M>(i)).collect();
    update_columns(envelope, executor, model, &columns, false).await
}

/// `UPDATE` only `columns` (the generated `<Name>Column` enum), sealing only
/// the encrypted ones, in one [`Envelope::seal_many`] call. The statement
/// also matches the tenant, so values sealed for the model's tenant never
/// land in a row of another tenant. Fails with [`Error::Query`]
/// (`sqlx::Error::RowNotFound`) when no row has the model's key (and tenant),
/// and with [`Error::Config`] for an empty list.
pub async fn update_fields<'c, M, E>(
    envelope: &Envelope,
    executor: E,
    model: &M,
    columns: &[M::Column],
) -> Result<()>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let mut indices: Vec<usize> = columns.iter().map(|c| c.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.is_empty() {
        return Err(Error::Config(format!(
            "update_fields on {} needs at least one column",
            M::DESCRIPTION.name
        )));
    }
    update_columns(envelope, executor, model, &indices, true).await
}

async fn update_columns<'c, M, E>(
    envelope: &Envelope,
    executor: E,
    model: &M,
    columns: &[usize],
    with_tenant: bool,
) -> Result<()>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let all_fields: Vec<usize> = (0..M::DESCRIPTION.encrypted.len()).collect();
    let fields: Vec<usize> = columns
        .iter()
        .filter_map(|&i| encrypted_index::<M>(i))
        .collect();
    let sealed_some = batch::seal_fields(envelope, std::slice::from_ref(model), &fields).await?;
    // Spread into DESCRIPTION.encrypted order for `bind_column`.
    let mut sealed: Vec<Option<Sealed>> = vec![None; all_fields.len()];
    for (f, s) in fields.iter().zip(sealed_some) {
        sealed[*f] = s;
    }
    let mut sql = String::from("UPDATE ");
    <E::Database as Dialect>::push_ident(&mut sql, M::TABLE);
    sql.push_str(" SET ");
    let mut args = <E::Database as Database>::Arguments::default();
    for (n, &i) in columns.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        <E::Database as Dialect>::push_ident(&mut sql, M::COLUMNS[i]);
        sql.push_str(" = ");
        bind_column(model, i, &sealed, &mut args)?;
        <E::Database as Dialect>::push_param(&mut sql, args.len());
        // A migrating field's plaintext is stale once its encrypted value is
        // written: cleared in the same statement.
        if let Some((_, plain)) = M::MIGRATING.iter().find(|(c, _)| *c == M::COLUMNS[i]) {
            sql.push_str(", ");
            <E::Database as Dialect>::push_ident(&mut sql, plain);
            sql.push_str(" = NULL");
        }
    }
    // The blind indexes of the written fields follow their values (a
    // compound index once, whichever of its fields are written).
    let tenant = model.tenant();
    for (x, index) in M::INDEXES.iter().enumerate() {
        if !columns
            .iter()
            .any(|&i| index.fields.contains(&M::COLUMNS[i]))
        {
            continue;
        }
        let parts = model.__index_parts(x);
        let parts: Vec<Option<&str>> = parts.iter().map(|p| p.as_deref()).collect();
        let value = index
            .value(envelope, M::TABLE, tenant.as_deref(), &parts)
            .await?;
        sql.push_str(", ");
        <E::Database as Dialect>::push_ident(&mut sql, index.column);
        sql.push_str(" = ");
        <E::Database as Dialect>::bind_index(&mut args, value.as_ref())
            .map_err(encode_error::<M>)?;
        <E::Database as Dialect>::push_param(&mut sql, args.len());
    }
    push_where(&mut sql, model, with_tenant, &mut args)?;
    if execute::<M, E>(executor, sql, args).await? == 0 {
        return Err(query_error::<M>(sqlx::Error::RowNotFound));
    }
    Ok(())
}

/// `SELECT` the row with primary key `key` and open it; `None` when there is
/// no such row.
pub async fn fetch_by_key<'c, M, E>(
    envelope: &Envelope,
    executor: E,
    key: &M::Key,
) -> Result<Option<M>>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let mut sql = select_from::<M, E::Database>();
    sql.push_str(" WHERE ");
    for (n, name) in M::PRIMARY_KEY.iter().enumerate() {
        if n > 0 {
            sql.push_str(" AND ");
        }
        <E::Database as Dialect>::push_ident(&mut sql, name);
        sql.push_str(" = ");
        <E::Database as Dialect>::push_param(&mut sql, n + 1);
    }
    let mut args = <E::Database as Database>::Arguments::default();
    M::bind_key(key, &mut args).map_err(encode_error::<M>)?;
    let row = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_optional(executor)
        .await
        .map_err(query_error::<M>)?;
    match row {
        None => Ok(None),
        Some(row) => {
            let sealed = M::sealed_from_row(&row).map_err(query_error::<M>)?;
            super::SealedRow::open(sealed, envelope).await.map(Some)
        }
    }
}

/// The rows of model `M` whose fields hashed by blind index `column` equal
/// `values` (one per field, in order; normalised and transformed as the
/// index says), within `tenant` for a tenant-bound model: one indexed
/// `SELECT ... WHERE <column> = ?`; candidates of another tenant (a truncated
/// index's value can collide across tenants) are dropped by their tenant
/// column before anything is opened, so another tenant's keys are never
/// used; the others are opened and kept only if their own prepared fields
/// equal the prepared values, so a truncated index's false positives never
/// reach the caller. A candidate of `tenant` that fails to open is an error
/// (as in every read).
pub async fn find_by_index<'c, M, E>(
    envelope: &Envelope,
    executor: E,
    column: &str,
    tenant: Option<&str>,
    values: &[&str],
) -> Result<Vec<M>>
where
    M: Table<E::Database>,
    E: Executor<'c>,
    E::Database: Dialect,
{
    let (x, index) = crate::index::of_model::<M>(column)?;
    let bind = crate::index::lookup_value::<M>(envelope, column, tenant, values).await?;
    let mut sql = select_from::<M, E::Database>();
    sql.push_str(" WHERE ");
    <E::Database as Dialect>::push_ident(&mut sql, index.column);
    sql.push_str(" = ");
    <E::Database as Dialect>::push_param(&mut sql, 1);
    let mut args = <E::Database as Database>::Arguments::default();
    <E::Database as Dialect>::bind_index(&mut args, Some(&bind)).map_err(encode_error::<M>)?;
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(executor)
        .await
        .map_err(query_error::<M>)?;
    let mut sealed = Vec::with_capacity(rows.len());
    for row in &rows {
        let s = M::sealed_from_row(row).map_err(query_error::<M>)?;
        if super::SealedRow::tenant(&s).as_deref() == tenant {
            sealed.push(s);
        }
    }
    let opened = super::batch::open_all(envelope, sealed).await?;
    let wanted: Vec<_> = values.iter().map(|v| index.prepare(v)).collect();
    Ok(opened
        .into_iter()
        .filter(|m| index.matches(&m.__index_parts(x), &wanted))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::push_quoted;

    #[test]
    fn identifiers_are_quoted_part_by_part() {
        let mut s = String::new();
        push_quoted(&mut s, "app.patients", '"');
        assert_eq!(s, r#""app"."patients""#);
        let mut s = String::new();
        push_quoted(&mut s, "we`ird", '`');
        assert_eq!(s, "`we``ird`");
    }
}
