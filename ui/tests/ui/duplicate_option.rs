use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(table = "patients", table = "people")]
struct Patient {
    id: i64,
    #[encrypt(pad = 16, pad = 32)]
    name: String,
}

fn main() {}
