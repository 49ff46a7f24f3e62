use sqlx_envelope::Encrypted;

struct Diagnosis {
    code: String,
}

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt]
    diagnosis: Diagnosis,
}

fn main() {}
