//! Row keys and tenants as jobs read, compare and bind them.
//!
//! A value a job writes must open through the model and the other way round,
//! so a job binds each value to exactly the context the model builds: the
//! primary-key parts in canonical form ([`PkPart`]: integers widened to `i64`,
//! UUIDs as their 16 bytes, text, bytes) and the tenant string as the model's
//! [`crate::model::TenantField`] renders it. This module reads those from a row
//! whatever the key's shape (one column or several, any of the four kinds) and
//! whatever the database stores (a PostgreSQL `uuid`, a MySQL `BINARY(16)`, a
//! SQLite `BLOB`), pages by the whole key (row-value comparison, which all three
//! databases evaluate in key order), and binds key values back in the type each
//! database compares them with. Job checkpoints store keys in their canonical
//! form, so a cursor means the same row on every worker and after a restart.

use sqlx::Row;

use super::db::{Dialect, Ident};
use super::{JobError, JobResult};
use crate::context::{PkPart, RowId};
use crate::model::{PkKind, TenantKind};

/// One primary-key column of a job's target, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkColumn {
    /// The column.
    pub name: Ident,
    /// How its value is canonicalised (as the model's field type does).
    pub kind: PkKind,
}

/// The tenant column of a job's target: each row's tenant is bound into its
/// values, and new values go under that tenant's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBinding {
    /// The column.
    pub column: Ident,
    /// How its value becomes the tenant string (as the model's field type does).
    pub kind: TenantKind,
}

/// Parse a key specification such as `id`, `id:uuid` or `tenant_id:int,id:uuid`
/// (kinds: `int`, `uuid`, `text`, `bytes`; default `int`).
pub fn parse_pk_spec(spec: &str) -> JobResult<Vec<PkColumn>> {
    let parts: Vec<PkColumn> = spec
        .split(',')
        .map(|part| {
            let (name, kind) = part.trim().split_once(':').unwrap_or((part.trim(), "int"));
            let kind = match kind.trim() {
                "int" | "integer" | "bigint" => PkKind::Int,
                "uuid" => PkKind::Uuid,
                "text" | "string" | "varchar" => PkKind::Text,
                "bytes" | "binary" | "blob" | "bytea" => PkKind::Bytes,
                other => {
                    return Err(JobError::Invalid(format!(
                        "primary key column {name:?}: unknown kind {other:?} (use int, uuid, text or bytes)"
                    )));
                }
            };
            Ok(PkColumn {
                name: Ident::new(name.trim())?,
                kind,
            })
        })
        .collect::<JobResult<_>>()?;
    if parts.is_empty() {
        return Err(JobError::Invalid("empty primary key".into()));
    }
    Ok(parts)
}

/// Parse a tenant column specification such as `clinic` or `tenant_id:uuid`
/// (kinds: `text`, `int`, `uuid`; default `text`).
pub fn parse_tenant_spec(spec: &str) -> JobResult<TenantBinding> {
    let (name, kind) = spec.trim().split_once(':').unwrap_or((spec.trim(), "text"));
    let kind = match kind.trim() {
        "text" | "string" => TenantKind::Text,
        "int" | "integer" | "bigint" => TenantKind::Int,
        "uuid" => TenantKind::Uuid,
        other => {
            return Err(JobError::Invalid(format!(
                "tenant column {name:?}: unknown kind {other:?} (use text, int or uuid)"
            )));
        }
    };
    Ok(TenantBinding {
        column: Ident::new(name.trim())?,
        kind,
    })
}

/// A value to bind, in the Rust type its database compares it with.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// Bind one [`Arg`] onto a query of any driver.
macro_rules! bind_arg {
    ($q:expr, $a:expr) => {
        match $a {
            $crate::jobs::rowkey::Arg::I64(v) => $q.bind(*v),
            $crate::jobs::rowkey::Arg::Text(s) => $q.bind(s.clone()),
            $crate::jobs::rowkey::Arg::Bytes(b) => $q.bind(b.clone()),
        }
    };
}
pub(crate) use bind_arg;

/// The expression that reads key part `c` in its canonical type.
fn read_expr(d: Dialect, c: &str, int: bool, uuid: bool) -> String {
    match d {
        Dialect::Postgres if int => format!("CAST({c} AS BIGINT)"),
        Dialect::Postgres if uuid => format!("CAST({c} AS TEXT)"),
        Dialect::MySql if int => format!("CAST({c} AS SIGNED)"),
        _ => c.to_owned(),
    }
}

/// `SELECT` expressions reading every key part, in key order.
pub(crate) fn select_key(d: Dialect, key: &[PkColumn]) -> Vec<String> {
    key.iter()
        .map(|k| {
            read_expr(
                d,
                &d.quote(&k.name),
                k.kind == PkKind::Int,
                k.kind == PkKind::Uuid,
            )
        })
        .collect()
}

/// The `SELECT` expression reading the tenant.
pub(crate) fn select_tenant(d: Dialect, t: &TenantBinding) -> String {
    read_expr(
        d,
        &d.quote(&t.column),
        t.kind == TenantKind::Int,
        t.kind == TenantKind::Uuid,
    )
}

/// The key columns, comma-separated (for `ORDER BY`).
pub(crate) fn key_list(d: Dialect, key: &[PkColumn]) -> String {
    key.iter()
        .map(|k| d.quote(&k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Placeholder `n` for a value compared with a column of kind `uuid` or not.
fn ph(d: Dialect, uuid: bool, n: usize) -> String {
    match d {
        Dialect::Postgres if uuid => format!("CAST(${n} AS uuid)"),
        _ => d.ph(n),
    }
}

/// `key op (placeholders from first)`: a row-value comparison for composite
/// keys, evaluated in key order by all three databases. Uses `key.len()`
/// placeholders.
pub(crate) fn compare(d: Dialect, key: &[PkColumn], op: &str, first: usize) -> String {
    let phs: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| ph(d, k.kind == PkKind::Uuid, first + i))
        .collect();
    if key.len() == 1 {
        format!("{} {op} {}", d.quote(&key[0].name), phs[0])
    } else {
        format!("({}) {op} ({})", key_list(d, key), phs.join(", "))
    }
}

/// `tenant = placeholder n`.
pub(crate) fn tenant_eq(d: Dialect, t: &TenantBinding, n: usize) -> String {
    format!(
        "{} = {}",
        d.quote(&t.column),
        ph(d, t.kind == TenantKind::Uuid, n)
    )
}

/// The bind arguments of a key, in key order.
pub(crate) fn key_args(d: Dialect, row: &RowId) -> Vec<Arg> {
    row.parts().iter().map(|p| part_arg(d, p)).collect()
}

/// The bind argument of one key part.
pub(crate) fn part_arg(d: Dialect, p: &PkPart) -> Arg {
    match p {
        PkPart::Int(v) => Arg::I64(*v),
        PkPart::Uuid(b) if d == Dialect::Postgres => Arg::Text(hyphenated(b)),
        PkPart::Uuid(b) => Arg::Bytes(b.to_vec()),
        PkPart::Text(s) => Arg::Text(s.clone()),
        PkPart::Bytes(b) => Arg::Bytes(b.clone()),
    }
}

/// The bind argument selecting tenant `tenant` (as the model renders it).
pub(crate) fn tenant_arg(d: Dialect, t: &TenantBinding, tenant: &str) -> JobResult<Arg> {
    Ok(match t.kind {
        TenantKind::Text => Arg::Text(tenant.to_owned()),
        TenantKind::Int => Arg::I64(tenant.parse().map_err(|_| {
            JobError::Invalid(format!(
                "tenant {tenant:?} is not an integer, but tenant column {} is",
                t.column
            ))
        })?),
        TenantKind::Uuid => {
            let b = parse_uuid(tenant).ok_or_else(|| {
                JobError::Invalid(format!(
                    "tenant {tenant:?} is not a UUID, but tenant column {} is",
                    t.column
                ))
            })?;
            part_arg(d, &PkPart::Uuid(b))
        }
    })
}

/// Read the key whose parts are columns `first..first + key.len()` of `r`
/// (selected with [`select_key`]).
pub(crate) fn read_key<R>(r: &R, first: usize, key: &[PkColumn]) -> JobResult<RowId>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut parts = Vec::with_capacity(key.len());
    for (i, k) in key.iter().enumerate() {
        let idx = first + i;
        parts.push(match k.kind {
            PkKind::Int => PkPart::Int(r.try_get(idx)?),
            PkKind::Uuid => PkPart::Uuid(read_uuid(r, idx, &k.name)?),
            PkKind::Text => PkPart::Text(r.try_get(idx)?),
            PkKind::Bytes => PkPart::Bytes(r.try_get(idx)?),
        });
    }
    Ok(RowId::composite(parts))
}

/// Read the tenant at column `idx` of `r` (selected with [`select_tenant`]),
/// rendered as the model renders it; `None` for NULL.
pub(crate) fn read_tenant<R>(r: &R, idx: usize, t: &TenantBinding) -> JobResult<Option<String>>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let is_null = {
        use sqlx::ValueRef as _;
        r.try_get_raw(idx)?.is_null()
    };
    if is_null {
        return Ok(None);
    }
    Ok(Some(match t.kind {
        TenantKind::Text => r.try_get(idx)?,
        TenantKind::Int => r.try_get::<i64, _>(idx)?.to_string(),
        TenantKind::Uuid => hyphenated(&read_uuid(r, idx, &t.column)?),
    }))
}

/// A UUID cell: PostgreSQL's text rendering (selected with a cast), or the 16
/// bytes MySQL/MariaDB and SQLite store (as sqlx encodes `uuid::Uuid`); a
/// textual UUID is parsed too, but a job's precheck refuses a `uuid` key or
/// tenant in a text column, since its comparisons bind `CAST(.. AS uuid)` on
/// PostgreSQL and the 16 bytes on MySQL/MariaDB and SQLite.
fn read_uuid<R>(r: &R, idx: usize, column: &Ident) -> JobResult<[u8; 16]>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let bytes: Option<Vec<u8>> = r.try_get_unchecked(idx).ok();
    let parsed = match bytes {
        Some(b) if b.len() == 16 => b.try_into().ok(),
        Some(b) => std::str::from_utf8(&b).ok().and_then(parse_uuid),
        None => r
            .try_get::<String, _>(idx)
            .ok()
            .and_then(|s| parse_uuid(&s)),
    };
    parsed.ok_or_else(|| {
        JobError::Invalid(format!(
            "column {column} does not hold UUIDs (16 bytes or their text form); declare its real kind"
        ))
    })
}

/// A UUID as hyphenated lower-case hex (how `uuid::Uuid` displays).
pub(crate) fn hyphenated(b: &[u8; 16]) -> String {
    crate::format::uuid_hyphenated(b)
}

/// Parse a UUID in hyphenated or simple hex form.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    crate::format::unhex(&hex)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_kinds_and_defaults() {
        let key = parse_pk_spec("tenant_id:int, id:uuid").unwrap();
        assert_eq!(key.len(), 2);
        assert_eq!(key[0].kind, PkKind::Int);
        assert_eq!(key[1].name.as_str(), "id");
        assert_eq!(key[1].kind, PkKind::Uuid);
        assert_eq!(parse_pk_spec("id").unwrap()[0].kind, PkKind::Int);
        assert!(parse_pk_spec("id:float").is_err());
        assert!(parse_pk_spec("id;drop:int").is_err());
        assert_eq!(parse_tenant_spec("clinic").unwrap().kind, TenantKind::Text);
        assert_eq!(parse_tenant_spec("t:uuid").unwrap().kind, TenantKind::Uuid);
        assert!(parse_tenant_spec("t:date").is_err());
    }

    #[test]
    fn composite_keys_compare_as_row_values() {
        let key = parse_pk_spec("tenant_id:int,id:uuid").unwrap();
        assert_eq!(
            compare(Dialect::Postgres, &key, ">", 3),
            r#"("tenant_id", "id") > ($3, CAST($4 AS uuid))"#
        );
        assert_eq!(
            compare(Dialect::MySql, &key[..1], "<=", 1),
            "`tenant_id` <= ?"
        );
    }

    #[test]
    fn uuids_render_as_the_uuid_crate_does() {
        let b = parse_uuid("67E55044-10B1-426F-9247-BB680E5FE0C8").unwrap();
        assert_eq!(hyphenated(&b), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(parse_uuid("67e5504410b1426f9247bb680e5fe0c8"), Some(b));
        assert_eq!(parse_uuid("nope"), None);
    }
}
