// Generated code compiles without warnings in a crate that denies them, for
// private and public models whose generated items are never used.
#![deny(warnings, missing_docs, unused, clippy::all)]
//! A user crate.

use sqlx_envelope::Encrypted;

#[derive(Encrypted)]
#[envelope(id(region, number), tenant = "clinic")]
struct LabResult {
    region: String,
    number: i64,
    clinic: Option<String>,
    #[encrypt]
    result: String,
    #[encrypt(hide_null, pad = 8)]
    comment: Option<String>,
    #[encrypt(json, column = "extra_json")]
    extra: Option<Vec<u32>>,
}

/// Public models need their generated items documented too.
pub mod public {
    use sqlx_envelope::{Encrypted, Json};

    /// A patient.
    #[derive(Encrypted)]
    #[envelope(id_not_secret)]
    pub struct Patient {
        /// Id.
        pub id: uuid::Uuid,
        /// Name.
        #[encrypt]
        pub name: String,
        /// Notes.
        #[encrypt]
        pub notes: Option<Json<serde_json::Value>>,
        pub(crate) r#type: i32,
        /// Weight, hidden when unknown (fixed width: no padding needed).
        #[encrypt(hide_null)]
        pub weight: Option<f64>,
    }
}

fn main() {
    let _ = <LabResult as Encrypted>::TABLE;
}
