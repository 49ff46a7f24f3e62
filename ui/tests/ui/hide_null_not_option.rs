use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(hide_null)]
    name: String,
}

fn main() {}
