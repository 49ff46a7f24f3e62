use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    #[envelope(id)]
    patient_id: i64,
    #[encrypt]
    name: String,
}

fn main() {}
