use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
enum Patient {
    Known { id: i64 },
}

fn main() {}
