use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt(index(column = "age_bidx", bits = 256))]
    age: i64,
}

fn main() {}
