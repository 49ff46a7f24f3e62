// `.opened` applies to queries whose rows are sealed rows, not to any row type.
use sqlx_envelope::{Envelope, QueryAsExt};

#[derive(sqlx::FromRow)]
struct Plain {
    id: i64,
}

async fn load(envelope: &Envelope, pool: &sqlx::SqlitePool) {
    let _ = sqlx::query_as::<_, Plain>("SELECT id FROM plain")
        .opened(envelope)
        .fetch_all(pool)
        .await;
}

fn main() {}
