use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(id_not_secret = true)]
struct Patient {
    id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
