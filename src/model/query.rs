//! Any `sqlx::query_as` on a sealed row, opened in the same call.
//!
//! Queries by clear columns, joins and pagination stay ordinary sqlx: write
//! `sqlx::query_as::<_, PatientSealed>(...)` (or `QueryBuilder::build_query_as`)
//! and add `.opened(&envelope)` before fetching. The fetch methods then return
//! models, so a result set cannot be used without being opened, and opening
//! uses the batch machinery of [`super::batch`] (one key lookup per data key,
//! large pages across cores, streams opened while they are fetched).
//!
//! `sqlx::query_as::<_, Patient>` itself still does not compile: the model has
//! no `FromRow`, only its sealed row does.

use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, TryStreamExt};
use sqlx::query::{Map, QueryAs};
use sqlx::{Database, Executor, FromRow, IntoArguments};

use super::{Encrypted, SealedRow, batch};
use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// A query whose rows are sealed rows: `sqlx::query_as::<_, PatientSealed>`,
/// `QueryBuilder::build_query_as`, and `sqlx::query_as!(PatientSealed, ...)`
/// (a `Map`).
pub trait SealedQuery<'q, DB: Database>: Sized + Send {
    /// The sealed row type.
    type Row: SealedRow;

    /// Run the query and stream its rows, still sealed.
    fn fetch_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxStream<'e, std::result::Result<Self::Row, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e;

    /// Run the query and return its first row, still sealed (the driver
    /// fetches at most one).
    fn fetch_optional_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxFuture<'e, std::result::Result<Option<Self::Row>, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e;
}

impl<'q, DB, S, A> SealedQuery<'q, DB> for QueryAs<'q, DB, S, A>
where
    DB: Database,
    A: 'q + Send + IntoArguments<DB>,
    S: SealedRow + Unpin + for<'r> FromRow<'r, DB::Row>,
{
    type Row = S;

    fn fetch_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxStream<'e, std::result::Result<S, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        self.fetch(executor)
    }

    fn fetch_optional_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxFuture<'e, std::result::Result<Option<S>, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        Box::pin(self.fetch_optional(executor))
    }
}

impl<'q, DB, F, S, A> SealedQuery<'q, DB> for Map<'q, DB, F, A>
where
    DB: Database,
    F: FnMut(DB::Row) -> std::result::Result<S, sqlx::Error> + Send,
    A: 'q + Send + IntoArguments<DB>,
    S: SealedRow + Unpin,
{
    type Row = S;

    fn fetch_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxStream<'e, std::result::Result<S, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        self.fetch(executor)
    }

    fn fetch_optional_sealed<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> BoxFuture<'e, std::result::Result<Option<S>, sqlx::Error>>
    where
        'q: 'e,
        Self: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        Box::pin(self.fetch_optional(executor))
    }
}

/// Adds [`QueryAsExt::opened`] to every [`SealedQuery`].
pub trait QueryAsExt<'q, DB: Database>: SealedQuery<'q, DB> {
    /// Open the rows this query returns through `envelope`: the fetch methods
    /// of [`Opened`] return models instead of sealed rows.
    fn opened(self, envelope: &Envelope) -> Opened<'q, '_, DB, Self> {
        Opened {
            query: self,
            envelope,
            db: PhantomData,
        }
    }
}

impl<'q, DB: Database, Q: SealedQuery<'q, DB>> QueryAsExt<'q, DB> for Q {}

/// A query on sealed rows whose results are opened before they are
/// returned. Made by [`QueryAsExt::opened`].
#[must_use = "a query does nothing until it is fetched"]
pub struct Opened<'q, 'v, DB: Database, Q> {
    query: Q,
    envelope: &'v Envelope,
    db: PhantomData<fn() -> &'q DB>,
}

type Model<'q, DB, Q> = <<Q as SealedQuery<'q, DB>>::Row as SealedRow>::Model;

fn query_error<S: SealedRow>(source: sqlx::Error) -> Error {
    Error::Query {
        model: <S::Model as Encrypted>::DESCRIPTION.name,
        source,
    }
}

impl<'q, 'v, DB: Database, Q: SealedQuery<'q, DB>> Opened<'q, 'v, DB, Q> {
    async fn rows<'e, 'c: 'e, E>(self, executor: E) -> Result<(Vec<Q::Row>, &'v Envelope)>
    where
        'q: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        let rows = self
            .query
            .fetch_sealed(executor)
            .try_collect()
            .await
            .map_err(query_error::<Q::Row>)?;
        Ok((rows, self.envelope))
    }

    /// Every row, opened ([`super::open_all`]): fails on the first row that
    /// does not open, with [`Error::Row`] naming its position and column.
    pub async fn fetch_all<'e, 'c: 'e, E>(self, executor: E) -> Result<Vec<Model<'q, DB, Q>>>
    where
        'q: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        let (rows, envelope) = self.rows(executor).await?;
        batch::open_all(envelope, rows).await
    }

    /// Every row, each opened on its own ([`super::open_each`]): one result
    /// per row, so a row that does not open fails alone. The outer error is
    /// the query's.
    pub async fn fetch_each<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> Result<Vec<Result<Model<'q, DB, Q>>>>
    where
        'q: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        let (rows, envelope) = self.rows(executor).await?;
        Ok(batch::open_each(envelope, rows).await)
    }

    /// The first row, opened; [`Error::Query`] with `sqlx::Error::RowNotFound`
    /// when there is none.
    pub async fn fetch_one<'e, 'c: 'e, E>(self, executor: E) -> Result<Model<'q, DB, Q>>
    where
        'q: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        self.fetch_optional(executor)
            .await?
            .ok_or_else(|| query_error::<Q::Row>(sqlx::Error::RowNotFound))
    }

    /// The first row, opened, if there is one.
    pub async fn fetch_optional<'e, 'c: 'e, E>(
        self,
        executor: E,
    ) -> Result<Option<Model<'q, DB, Q>>>
    where
        'q: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        let first = self.query.fetch_optional_sealed(executor).await;
        match first.map_err(query_error::<Q::Row>)? {
            Some(row) => row.open(self.envelope).await.map(Some),
            None => Ok(None),
        }
    }

    /// The rows as a stream, opened while the next ones are fetched
    /// ([`super::open_stream`]): one item per row.
    pub fn fetch<'e, 'c: 'e, E>(self, executor: E) -> BoxStream<'e, Result<Model<'q, DB, Q>>>
    where
        'q: 'e,
        'v: 'e,
        Q: 'e,
        E: 'e + Executor<'c, Database = DB>,
        DB: 'e,
    {
        batch::open_stream(self.envelope, self.query.fetch_sealed(executor))
    }
}
