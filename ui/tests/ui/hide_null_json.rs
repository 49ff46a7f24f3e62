use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(json, hide_null)]
    allergies: Option<Vec<String>>,
}

fn main() {}
