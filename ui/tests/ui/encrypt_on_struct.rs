use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[encrypt]
struct Patient {
    id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
