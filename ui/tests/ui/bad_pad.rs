use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(pad = 0)]
    name: String,
}

fn main() {}
