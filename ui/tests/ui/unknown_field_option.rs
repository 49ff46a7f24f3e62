use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(hide_nulls)]
    name: Option<String>,
}

fn main() {}
