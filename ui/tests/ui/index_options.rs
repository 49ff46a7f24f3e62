use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
struct Member {
    id: i64,
    #[encrypt(index(column = "email_bidx", bits = 300))]
    email: String,
    #[encrypt(index(column = "phone_bidx", transform = "first_digits(3)"))]
    phone: String,
    #[encrypt(index(bits = 16))]
    name: String,
    #[encrypt(index(column = "nick bidx"))]
    nick: String,
    #[encrypt(json, index(column = "profile_bidx"))]
    profile: String,
}

fn main() {}
