use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    #[encrypt]
    id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
