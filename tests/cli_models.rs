//! An application's own tool (`examples/patient_tool.rs`, the README's
//! `Patient` registered with `cli::main_with_models`): a `--table`/`--column`
//! of the registered model re-encrypts with the model's UUID key, tenant and
//! codec, so the values it writes open through the model; the same column
//! described again with `--pk` is refused before anything is written. On
//! SQLite: which description the tool takes does not depend on the database
//! (the model jobs themselves run on all three in `jobs_model.rs`).
#![cfg(all(
    feature = "cli",
    feature = "postgres",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono",
    feature = "json"
))]

mod jobs_support;
mod support;
#[macro_use]
mod derive_support;

#[allow(dead_code)]
mod sqlite {
    #[allow(dead_code)]
    type Db = sqlx::Sqlite;
    include!("derive_support/flagship.rs");
}

use chrono::NaiveDate;
use jobs_support::{
    cli, db_url, envelope_from_file, job_pool, patient_tool, random_key, retire_active,
    write_key_file,
};
use sqlite::{Notes, Patient};
use sqlx_envelope::jobs::{Target, count_rows_on};
use support::Kind;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_column_of_a_registered_model_takes_the_models_description() {
    let db = support::Db::connect(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let jp = job_pool(&db);
    let url = db_url(&db);
    db.exec(
        "CREATE TABLE patients (id BLOB PRIMARY KEY, clinic TEXT NOT NULL, ward TEXT NOT NULL, \
         name BLOB NULL, date_of_birth BLOB NULL, notes BLOB NULL, phone BLOB NULL, name_bidx BLOB NULL)",
    )
    .await;
    let patients: Vec<Patient> = (0..12)
        .map(|i| Patient {
            id: Uuid::new_v4(),
            clinic: ["north", "south"][i % 2].into(),
            ward: "general".into(),
            name: format!("Patient {i}"),
            date_of_birth: NaiveDate::from_ymd_opt(1950 + i as i32, 1, 1).unwrap(),
            notes: Notes {
                allergies: vec![],
                history: format!("h{i}"),
            },
            phone: (i % 3 != 0).then(|| format!("+1 555 {i:04}")),
        })
        .collect();
    for p in &patients {
        p.insert(&envelope, pool).await.expect("insert");
    }
    let with_phone = patients.iter().filter(|p| p.phone.is_some()).count() as u64;
    let old = retire_active(&envelope).await;
    let old_list = old
        .iter()
        .map(|k| k.get().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let phone = Target::for_model::<Patient>("phone").unwrap();
    let name = Target::for_model::<Patient>("name").unwrap();
    assert_eq!(count_rows_on(&jp, &phone, &old).await.unwrap(), with_phone);

    // `patient_tool reencrypt --table patients --column phone --key OLD ...`.
    let reencrypt_phone = |extra: &[&str]| {
        patient_tool(&url, &keys)
            .args(["reencrypt", "--table", "patients", "--column", "phone"])
            .args(["--key", &old_list])
            .args(extra)
            .output()
            .expect("run patient_tool")
    };

    // The column described again beside the model: refused, nothing written.
    let out = reencrypt_phone(&["--pk", "id:uuid"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("registered model Patient"), "{stderr}");
    assert!(stderr.contains("leave out --pk"), "{stderr}");
    assert_eq!(count_rows_on(&jp, &phone, &old).await.unwrap(), with_phone);

    // The table and column alone: the model's key, tenant and padded codec.
    let out = reencrypt_phone(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(count_rows_on(&jp, &phone, &old).await.unwrap(), 0);
    assert_eq!(
        count_rows_on(&jp, &name, &old).await.unwrap(),
        patients.len() as u64,
        "only the named column moves"
    );
    // `status`/`verify --column patients.phone` take the model's description
    // too: flags that say the same are accepted, flags that disagree refused.
    let tool = |args: &[&str]| {
        let out = patient_tool(&url, &keys)
            .args(args)
            .output()
            .expect("run patient_tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    for agreeing in [
        &["verify", "--column", "patients.phone"][..],
        &[
            "verify",
            "--column",
            "patients.phone:id:uuid",
            "--tenant-column",
            "clinic",
        ],
        &[
            "status",
            "--column",
            "patients.phone",
            "--tenant-column",
            "clinic:text",
        ],
    ] {
        let (code, text) = tool(agreeing);
        assert_eq!(code, Some(0), "{agreeing:?}: {text}");
        assert!(
            text.contains("tenant north"),
            "{agreeing:?}: per tenant: {text}"
        );
    }
    // A plaintext copy of the phones, verified with the field's own codec said
    // again on the command line (text, pad 16): accepted; another pad refused.
    db.exec("ALTER TABLE patients ADD COLUMN phone_plain TEXT NULL")
        .await;
    for p in &patients {
        sqlx::query("UPDATE patients SET phone_plain = ? WHERE id = ?")
            .bind(p.phone.clone())
            .bind(p.id)
            .execute(pool)
            .await
            .unwrap();
    }
    let against_plain = [
        "verify",
        "--column",
        "patients.phone",
        "--plaintext-column",
        "phone_plain",
    ];
    let (code, text) = tool(
        &[
            &against_plain[..],
            &["--plaintext-type", "text", "--pad", "16"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("opened 8, mismatched 0"), "{text}");
    let (code, text) = tool(&[&against_plain[..], &["--plaintext-type", "text"]].concat());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--plaintext-type/--pad"), "{text}");
    for (disagreeing, flag) in [
        (
            &["verify", "--column", "patients.phone:id:text"][..],
            ":PK in --column",
        ),
        (
            &[
                "status",
                "--column",
                "patients.phone",
                "--tenant-column",
                "ward",
            ],
            "--tenant-column",
        ),
    ] {
        let (code, text) = tool(disagreeing);
        assert_eq!(code, Some(1), "{disagreeing:?}: {text}");
        assert!(
            text.contains("registered model Patient") && text.contains(flag),
            "{disagreeing:?}: {text}"
        );
    }

    // A fresh process (no cached keys) opens every row through the model.
    let fresh = envelope_from_file(&db, &keys);
    for p in &patients {
        let got = Patient::fetch_by_key(&fresh, pool, &p.id)
            .await
            .expect("open")
            .expect("row");
        assert_eq!(&got, p);
    }
}

/// A column the application's tool backfilled with `--model`, before the
/// application ever sealed through the model: the job records the model's
/// description in the key store's column registry, so the installed tool,
/// which has no model, reports the column with the model's UUID key and per
/// tenant, as it would after the model's first seal. A dry run records
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_with_a_model_records_the_models_description() {
    let db = support::Db::connect(Kind::Sqlite).await;
    let support::Db::Sqlite(pool, _) = &db else {
        unreachable!()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let url = db_url(&db);
    db.exec(
        "CREATE TABLE patients (id BLOB PRIMARY KEY, clinic TEXT NOT NULL, ward TEXT NOT NULL, \
         name BLOB NULL, date_of_birth BLOB NULL, notes BLOB NULL, phone BLOB NULL, name_bidx BLOB NULL, \
         name_plain TEXT NULL)",
    )
    .await;
    for i in 0..6 {
        sqlx::query(
            "INSERT INTO patients (id, clinic, ward, name_plain) VALUES (?, ?, 'general', ?)",
        )
        .bind(Uuid::new_v4())
        .bind(["north", "south"][i % 2])
        .bind(format!("Patient {i}"))
        .execute(pool)
        .await
        .unwrap();
    }
    let run = |tool: std::process::Command, args: &[&str]| {
        let mut tool = tool;
        let out = tool.args(args).output().expect("run the tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let backfill = [
        "backfill",
        "--model",
        "Patient",
        "--encrypted-column",
        "name",
        "--plaintext-column",
        "name_plain",
    ];
    let (code, text) = run(patient_tool(&url, &keys), &["migrate"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(
        patient_tool(&url, &keys),
        &[&backfill[..], &["--dry-run"]].concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    let registered: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlx_envelope_registry WHERE model IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(registered, 0, "a dry run records nothing");
    let (code, text) = run(patient_tool(&url, &keys), &backfill);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(cli(&url, &keys), &["status"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("patients.name (key id:uuid)"), "{text}");
    assert!(text.contains("tenant north: 3 encrypted"), "{text}");
    // The same column described by hand with the default key kind (`id` as
    // an integer, where it is a UUID): an error that says what to give.
    let verify = [
        "verify",
        "--column",
        "patients.name",
        "--plaintext-column",
        "name_plain",
    ];
    let (code, text) = run(cli(&url, &keys), &verify);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("do not read with the key id:int")
            && text.contains("--column TABLE.COLUMN:PK"),
        "{text}"
    );
    // A plaintext that differs from its encrypted value: verify names the
    // row (its key, never a value).
    let id: Uuid = sqlx::query_scalar("SELECT id FROM patients WHERE name_plain = 'Patient 0'")
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE patients SET name_plain = 'Someone Else' WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    let (code, text) = run(patient_tool(&url, &keys), &verify);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("1 mismatched"), "{text}");
    assert!(
        text.contains(&id.simple().to_string())
            && text.contains("opens to another value than the plaintext column"),
        "{text}"
    );
    assert!(
        !text.contains("Someone Else") && !text.contains("Patient 0"),
        "{text}"
    );
}
