use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(id(region, patient_no))]
struct Patient {
    region: String,
    number: i32,
    #[encrypt]
    name: String,
}

fn main() {}
