use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(hide_null)]
    phone: Option<String>,
    // Fixed width: no padding needed.
    #[encrypt(hide_null)]
    weight: Option<f64>,
}

fn main() {}
