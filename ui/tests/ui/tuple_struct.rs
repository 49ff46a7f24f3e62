use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient(i64, #[encrypt] String);

fn main() {}
