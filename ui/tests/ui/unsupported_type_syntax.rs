use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Patient {
    id: i64,
    #[encrypt]
    name: &'static str,
    #[encrypt]
    point: (i32, i32),
    #[encrypt]
    digest: [u8; 32],
    #[encrypt]
    maybe: Option<*const u8>,
}

fn main() {}
