use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(tabel = "patients")]
struct Patient {
    id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
