use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(tenant = "org")]
struct Patient {
    id: i64,
    #[encrypt]
    org: String,
    #[encrypt]
    name: String,
}

fn main() {}
