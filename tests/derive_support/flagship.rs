use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx_envelope::{Encrypted, Envelope, QueryAsExt, Result};
use uuid::Uuid;

/// Clinical notes, stored encrypted as JSON.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Notes {
    pub allergies: Vec<String>,
    pub history: String,
}

/// Table `patients` (from the name), primary key `id` (the default), rows
/// bound to their clinic. A random UUID reveals nothing, so it may appear in
/// error messages (`id_not_secret`).
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(tenant = "clinic", id_not_secret)]
pub struct Patient {
    pub id: Uuid,       // UUID v7, made by the application before the insert
    pub clinic: String, // the tenant: in clear, bound into every value
    pub ward: String,   // in clear: queryable and indexable
    #[encrypt(index(column = "name_bidx", normalize = "nfkc, trim, lowercase"))]
    pub name: String, // found by name through a blind index (see below)
    #[encrypt]
    pub date_of_birth: NaiveDate,
    #[encrypt(json)]
    pub notes: Notes,
    #[encrypt(pad = 16)]
    pub phone: Option<String>, // NULL stays NULL; the length shows only 16-byte blocks
}

/// Admit a patient: one call seals every encrypted field and inserts the row.
pub async fn admit(
    envelope: &Envelope,
    pool: &sqlx::Pool<Db>,
    name: &str,
    ward: &str,
) -> Result<Patient> {
    let patient = Patient {
        id: Uuid::now_v7(),
        clinic: "north".into(),
        ward: ward.into(),
        name: name.into(),
        date_of_birth: NaiveDate::from_ymd_opt(1815, 12, 10).expect("a valid date"),
        notes: Notes {
            allergies: vec!["penicillin".into()],
            history: "arrhythmia, monitored".into(),
        },
        phone: None,
    };
    patient.insert(envelope, pool).await?;
    Ok(patient)
}

/// A new phone number: fetch by primary key (opened), then seal and write
/// only `phone`. `None` if there is no such patient.
pub async fn change_phone(
    envelope: &Envelope,
    pool: &sqlx::Pool<Db>,
    id: Uuid,
    phone: &str,
) -> Result<Option<Patient>> {
    let Some(mut patient) = Patient::fetch_by_key(envelope, pool, &id).await? else {
        return Ok(None);
    };
    patient.phone = Some(phone.into());
    patient
        .update_fields(envelope, pool, &[PatientColumn::Phone])
        .await?;
    Ok(Some(patient))
}

/// A ward's patients: any query on the sealed row, opened in the same call,
/// one result per row (a damaged row fails alone, naming its position,
/// column and id).
pub async fn ward(
    envelope: &Envelope,
    pool: &sqlx::Pool<Db>,
    ward: &str,
) -> Result<Vec<Result<Patient>>> {
    let mut query = sqlx::QueryBuilder::<Db>::new("SELECT * FROM patients WHERE ward = ");
    query.push_bind(ward).push(" ORDER BY id");
    query
        .build_query_as::<PatientSealed>()
        .opened(envelope)
        .fetch_each(pool)
        .await
}

/// A clinic's patients by name: the blind index `name_bidx` (18 bits, planned
/// for a million patients) narrows the rows, the lookup opens them and keeps
/// exact matches ("ada lovelace " finds "Ada Lovelace").
pub async fn named(
    envelope: &Envelope,
    pool: &sqlx::Pool<Db>,
    clinic: &str,
    name: &str,
) -> Result<Vec<Patient>> {
    Patient::find_by_name(envelope, pool, clinic, name).await
}
