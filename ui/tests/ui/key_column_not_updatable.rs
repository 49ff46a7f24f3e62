// The primary key and the tenant have no variant in the column enum: an
// update cannot move a row to another identity or tenant by naming them.
use sqlx_envelope::{Encrypted, Envelope};

#[derive(Encrypted)]
#[envelope(tenant = "hospital")]
struct Patient {
    id: i64,
    hospital: String,
    #[encrypt]
    name: String,
}

async fn rename(envelope: &Envelope, pool: &sqlx::SqlitePool, patient: Patient) {
    let _ = patient
        .update_fields(envelope, pool, &[PatientColumn::Name, PatientColumn::Id])
        .await;
    let _ = patient
        .update_fields(envelope, pool, &[PatientColumn::Hospital])
        .await;
}

fn main() {}
