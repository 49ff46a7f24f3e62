// The plaintext model cannot be read from the database: only the sealed row
// implements `sqlx::FromRow`.
use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt]
    name: String,
}

async fn load(pool: &sqlx::SqlitePool) {
    let _ = sqlx::query_as::<_, Patient>("SELECT id, name FROM patients")
        .fetch_all(pool)
        .await;
}

fn main() {}
