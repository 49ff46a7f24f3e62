use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    patient_id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
