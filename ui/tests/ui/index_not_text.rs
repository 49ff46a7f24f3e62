use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(index(column = "weight_bidx", bits = 256))]
    weight: f64,
}

fn main() {}
