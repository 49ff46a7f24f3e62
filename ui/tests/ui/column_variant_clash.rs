use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt]
    first_name: String,
    #[encrypt]
    first__name: String,
}

fn main() {}
