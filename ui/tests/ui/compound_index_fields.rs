use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(index(column = "name_ward_bidx", fields = "name, ward", bits = 16))]
#[envelope(index(column = "name_age_bidx", fields = "name, age", bits = 16))]
#[envelope(index(column = "name-ward", fields = "name, ward", bits = 16))]
struct Patient {
    id: i64,
    ward: String,
    #[encrypt]
    name: String,
}

fn main() {}
