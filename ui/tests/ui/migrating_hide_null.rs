use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(hide_null, pad = 16, migrating_from = "phone_plain")]
    phone: Option<String>,
}

fn main() {}
