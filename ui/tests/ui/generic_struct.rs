use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient<T> {
    id: i64,
    #[encrypt]
    name: T,
}

fn main() {}
