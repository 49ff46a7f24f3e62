//! `#[derive(Encrypted)]` against real databases: every supported field type
//! round-trips through PostgreSQL, MariaDB and SQLite; NULL handling; column
//! overrides; padding; updates of one field.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "uuid",
    feature = "chrono",
    feature = "time"
))]

mod support;
#[macro_use]
mod derive_support;

use serde::{Deserialize, Serialize};
use sqlx_envelope::{
    CacheLimits, Context, Encrypted, Error, Json, RowId, SealedRow, format::OVERHEAD,
};
use support::Db;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    zip: u32,
}

/// One field of every supported type, and an `Option` of most.
#[derive(Encrypted, Debug, Clone, PartialEq)]
#[envelope(table = "all_types")]
struct AllTypes {
    id: i64,
    #[encrypt]
    text: String,
    #[encrypt]
    bytes: Vec<u8>,
    #[encrypt]
    flag: bool,
    #[encrypt]
    small: i8,
    #[encrypt]
    short: i16,
    #[encrypt]
    int32: i32,
    #[encrypt]
    big: i64,
    #[encrypt]
    uint64: u64,
    #[encrypt]
    huge: i128,
    #[encrypt]
    ratio: f32,
    #[encrypt]
    amount: f64,
    #[encrypt]
    letter: char,
    #[encrypt]
    uuid: uuid::Uuid,
    #[encrypt]
    c_date: chrono::NaiveDate,
    #[encrypt]
    c_time: chrono::NaiveTime,
    #[encrypt]
    c_naive: chrono::NaiveDateTime,
    #[encrypt]
    c_utc: chrono::DateTime<chrono::Utc>,
    #[encrypt]
    t_date: time::Date,
    #[encrypt]
    t_time: time::Time,
    #[encrypt]
    t_primitive: time::PrimitiveDateTime,
    #[encrypt]
    t_offset: time::OffsetDateTime,
    #[encrypt]
    json_value: serde_json::Value,
    #[encrypt]
    wrapped: Json<Address>,
    #[encrypt(json)]
    address: Address,
    #[encrypt(column = "renamed_col")]
    renamed: String,
    #[encrypt(pad = 32)]
    padded: String,
    #[encrypt]
    opt_text: Option<String>,
    #[encrypt]
    opt_int: Option<i32>,
    #[encrypt]
    opt_uuid: Option<uuid::Uuid>,
    #[encrypt]
    opt_date: Option<time::Date>,
    #[encrypt]
    opt_json: Option<serde_json::Value>,
    #[encrypt(json)]
    opt_address: Option<Address>,
    #[encrypt(hide_null, pad = 16)]
    hidden: Option<String>,
    #[encrypt(hide_null, pad = 16)]
    hidden_padded: Option<i64>,
    #[encrypt(hide_null)]
    hidden_int: Option<i64>,
}

fn full(id: i64) -> AllTypes {
    let addr = Address {
        street: "12 Rue de la Paix".into(),
        zip: 75002,
    };
    AllTypes {
        id,
        text: "Ada Lovelace ✓".into(),
        bytes: vec![0, 1, 2, 255],
        flag: true,
        small: i8::MIN,
        short: -12_345,
        int32: i32::MAX,
        big: i64::MIN,
        uint64: u64::MAX,
        huge: -170_141_183_460_469_231_731_687_303_715_884_105_728,
        ratio: 0.1,
        amount: -1234.5678,
        letter: 'ß',
        uuid: uuid::Uuid::now_v7(),
        c_date: chrono::NaiveDate::from_ymd_opt(1815, 12, 10).expect("date"),
        c_time: chrono::NaiveTime::from_hms_nano_opt(13, 14, 15, 123_456_789).expect("time"),
        c_naive: chrono::NaiveDate::from_ymd_opt(1969, 7, 20)
            .and_then(|d| d.and_hms_opt(20, 17, 40))
            .expect("datetime"),
        c_utc: chrono::DateTime::from_timestamp(1_700_000_000, 987_654_321).expect("instant"),
        t_date: time::macros::date!(2000 - 02 - 29),
        t_time: time::macros::time!(23:59:59.999_999_999),
        t_primitive: time::macros::datetime!(1900-01-01 0:00),
        t_offset: time::macros::datetime!(2024-06-30 12:00 -07:30),
        json_value: serde_json::json!({"allergies": ["penicillin"], "score": 1.5, "ok": null}),
        wrapped: Json(addr.clone()),
        address: addr.clone(),
        renamed: "renamed".into(),
        padded: "a".into(),
        opt_text: Some(String::new()),
        opt_int: Some(-1),
        opt_uuid: Some(uuid::Uuid::nil()),
        opt_date: Some(time::macros::date!(1970 - 01 - 01)),
        opt_json: Some(serde_json::json!([])),
        opt_address: Some(addr),
        hidden: Some("hidden value".into()),
        hidden_padded: Some(7),
        hidden_int: Some(i64::MIN),
    }
}

fn empty(id: i64) -> AllTypes {
    AllTypes {
        text: String::new(),
        bytes: Vec::new(),
        padded: "twenty characters!!!".into(),
        opt_text: None,
        opt_int: None,
        opt_uuid: None,
        opt_date: None,
        opt_json: None,
        opt_address: None,
        hidden: None,
        hidden_padded: None,
        hidden_int: None,
        ..full(id)
    }
}

async fn insert_all(db: &Db, table: &str, rows: &[AllTypesSealed]) {
    insert_rows!(db, AllTypes, table, rows, |b, r| {
        b.push_bind(r.id)
            .push_bind(&r.text)
            .push_bind(&r.bytes)
            .push_bind(&r.flag)
            .push_bind(&r.small)
            .push_bind(&r.short)
            .push_bind(&r.int32)
            .push_bind(&r.big)
            .push_bind(&r.uint64)
            .push_bind(&r.huge)
            .push_bind(&r.ratio)
            .push_bind(&r.amount)
            .push_bind(&r.letter)
            .push_bind(&r.uuid)
            .push_bind(&r.c_date)
            .push_bind(&r.c_time)
            .push_bind(&r.c_naive)
            .push_bind(&r.c_utc)
            .push_bind(&r.t_date)
            .push_bind(&r.t_time)
            .push_bind(&r.t_primitive)
            .push_bind(&r.t_offset)
            .push_bind(&r.json_value)
            .push_bind(&r.wrapped)
            .push_bind(&r.address)
            .push_bind(&r.renamed)
            .push_bind(&r.padded)
            .push_bind(&r.opt_text)
            .push_bind(&r.opt_int)
            .push_bind(&r.opt_uuid)
            .push_bind(&r.opt_date)
            .push_bind(&r.opt_json)
            .push_bind(&r.opt_address)
            .push_bind(&r.hidden)
            .push_bind(&r.hidden_padded)
            .push_bind(&r.hidden_int);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_type_round_trips_on_every_database() {
    assert_eq!(AllTypes::TABLE, "all_types");
    assert_eq!(AllTypes::COLUMNS.len(), 36);
    assert!(AllTypes::ENCRYPTED_COLUMNS.contains(&"renamed_col"));
    assert!(!AllTypes::ENCRYPTED_COLUMNS.contains(&"renamed"));

    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        // The physical table is unique per run; the model's logical table name
        // (bound into every value) stays `all_types`.
        let table = support::unique("derive_all");
        db.create_blob_table(&table, AllTypes::ENCRYPTED_COLUMNS)
            .await;

        let models = vec![full(1), empty(2)];
        let sealed = AllTypes::seal_all(&env, &models).await.expect("seal");
        insert_all(&db, &table, &sealed).await;

        let rows: Vec<AllTypesSealed> = select_all!(&db, AllTypesSealed, table, "id");
        assert_eq!(rows.len(), 2, "{kind:?}");
        // The generated Debug shows lengths, never plaintext.
        let debug = format!("{:?}", rows[0]);
        assert!(debug.starts_with("AllTypesSealed {"), "{debug}");
        assert!(!debug.contains("Ada") && !debug.contains("Paix"), "{debug}");
        let opened = AllTypes::open_all(&env, rows).await.expect("open_all");
        assert_eq!(opened, models, "{kind:?}");

        // One row at a time, through the inherent `open`.
        let rows: Vec<AllTypesSealed> = select_all!(&db, AllTypesSealed, table, "id");
        for (row, model) in rows.into_iter().zip(&models) {
            assert_eq!(&row.open(&env).await.expect("open"), model, "{kind:?}");
        }

        // What is stored: ciphertext, NULL for a None, a marker for hide_null.
        let raw = db.get_raw(&table, "text", 1).await.expect("text is set");
        assert_eq!(raw.len(), OVERHEAD + "Ada Lovelace ✓".len());
        assert!(!raw.windows(3).any(|w| w == b"Ada"));
        assert_eq!(
            db.get_raw(&table, "opt_text", 2).await,
            None,
            "{kind:?}: NULL stays NULL"
        );
        assert_eq!(db.get_raw(&table, "opt_address", 2).await, None);
        assert_eq!(
            db.get_raw(&table, "opt_text", 1).await.map(|v| v.len()),
            Some(OVERHEAD),
            "Some(\"\") is an empty value, not NULL"
        );
        let hidden_none = db
            .get_raw(&table, "hidden", 2)
            .await
            .expect("hide_null stores None as a value");
        assert_eq!(
            hidden_none.len(),
            OVERHEAD + 16,
            "a hidden NULL fills the pad block"
        );
        // A fixed-width type hides NULL without padding: None is as long as Some.
        let hidden_int = [
            db.get_raw(&table, "hidden_int", 1).await.expect("set"),
            db.get_raw(&table, "hidden_int", 2)
                .await
                .expect("hidden NULL"),
        ];
        assert_eq!(hidden_int[0].len(), OVERHEAD + 9, "{kind:?}");
        assert_eq!(hidden_int[1].len(), OVERHEAD + 9, "{kind:?}");
        let hidden_padded = [
            db.get_raw(&table, "hidden_padded", 1).await.expect("set"),
            db.get_raw(&table, "hidden_padded", 2)
                .await
                .expect("hidden NULL"),
        ];
        assert_eq!(
            hidden_padded[0].len(),
            OVERHEAD + 16,
            "Some and None look alike"
        );
        assert_eq!(hidden_padded[1].len(), OVERHEAD + 16);
        // Padding hides the length: 1 and 20 characters store the same size.
        let padded = [
            db.get_raw(&table, "padded", 1).await.expect("set"),
            db.get_raw(&table, "padded", 2).await.expect("set"),
        ];
        assert_eq!(padded[0].len(), OVERHEAD + 32);
        assert_eq!(padded[1].len(), OVERHEAD + 32);
        assert!(db.get_raw(&table, "renamed_col", 1).await.is_some());
        // Integers are fixed width: the length does not reveal the magnitude.
        assert_eq!(
            db.get_raw(&table, "big", 1).await.expect("set").len(),
            OVERHEAD + 8
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn values_are_bound_to_their_column_and_row() {
    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let mut a = full(1).seal(&env).await.expect("seal");
        // Same bytes, another column of the same row.
        a.renamed = a.text.clone();
        assert!(
            matches!(a.open(&env).await, Err(Error::Authentication)),
            "{kind:?}"
        );
        // Same bytes, the same column of another row.
        let b = full(2).seal(&env).await.expect("seal");
        let mut c = full(3).seal(&env).await.expect("seal");
        c.text = b.text.clone();
        assert!(matches!(c.open(&env).await, Err(Error::Authentication)));
        // Moving a whole row to another id fails too.
        let mut d = full(4).seal(&env).await.expect("seal");
        d.id = 5;
        assert!(matches!(d.open(&env).await, Err(Error::Authentication)));
        // A hidden NULL cannot be swapped for another row's hidden NULL.
        let mut e = empty(6).seal(&env).await.expect("seal");
        e.hidden = empty(7).seal(&env).await.expect("seal").hidden;
        assert!(matches!(e.open(&env).await, Err(Error::Authentication)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nulls_stay_null_unless_hidden() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = support::envelope(&db, CacheLimits::default());
    let sealed = empty(1).seal(&env).await.expect("seal");
    assert!(sealed.opt_text.is_none() && sealed.opt_json.is_none() && sealed.opt_address.is_none());
    // Hidden NULLs are ciphertext like any value: `hidden` is a `Sealed`, not an Option.
    let hidden: &sqlx_envelope::Sealed = &sealed.hidden;
    assert_eq!(hidden.len(), OVERHEAD + 16);
    assert_eq!(sealed.hidden_int.len(), OVERHEAD + 9);
    // NULL columns are not looked up when resolving keys.
    assert_eq!(
        sealed.sealed_values().len(),
        AllTypes::ENCRYPTED_COLUMNS.len() - 6
    );
    let back = sealed.open(&env).await.expect("open");
    assert_eq!(back.hidden, None);
    assert_eq!(back.hidden_int, None);
    assert_eq!(back.opt_int, None);
}

/// 0.1 stored a hidden NULL as the single byte 0x00 for every type; values
/// written that way still open as `None`, next to the filled form written now.
#[tokio::test(flavor = "multi_thread")]
async fn hidden_nulls_written_by_the_previous_release_still_open() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = support::envelope(&db, CacheLimits::default());
    let mut sealed = full(1).seal(&env).await.expect("seal");
    let row = RowId::from(1_i64);
    let legacy = |column| Context::new("all_types", column, &row);
    sealed.hidden_int = env
        .seal(&legacy("hidden_int"), &[0])
        .await
        .expect("legacy frame");
    assert_eq!(sealed.hidden_int.len(), OVERHEAD + 1);
    let back = sealed.open(&env).await.expect("legacy None opens");
    assert_eq!(back.hidden_int, None);
    assert_eq!(
        back.hidden,
        full(1).hidden,
        "the other fields are untouched"
    );

    // Anything else after the None marker is refused, not read as a value.
    let mut sealed = full(1).seal(&env).await.expect("seal");
    sealed.hidden_int = env
        .seal(&legacy("hidden_int"), &[0, 0, 0, 0, 0, 0, 0, 0, 1])
        .await
        .expect("seal");
    assert!(matches!(sealed.open(&env).await, Err(Error::Codec { .. })));
}

/// A model with a nullable id, for the "id not set yet" path.
#[derive(Encrypted)]
#[envelope(table = "drafts")]
struct Draft {
    id: Option<i64>,
    #[encrypt]
    body: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_an_id_is_refused() {
    let db = Db::connect(support::Kind::Sqlite).await;
    let env = support::envelope(&db, CacheLimits::default());
    let draft = Draft {
        id: None,
        body: "secret".into(),
    };
    assert!(draft.row_id().is_none());
    match draft.seal(&env).await {
        Err(Error::MissingRowId { table, column }) => {
            assert_eq!((table.as_str(), column.as_str()), ("drafts", "body"));
        }
        other => panic!("expected MissingRowId, got {other:?}"),
    }
    assert!(matches!(
        draft.seal_body(&env).await,
        Err(Error::MissingRowId { .. })
    ));
    // Nothing was encrypted: no data key was even minted.
    assert_eq!(env.stats().keyring_generate_calls, 0);

    // Once the id is set, the same model seals; a sealed row that lost its id
    // does not open.
    let draft = Draft {
        id: Some(9),
        ..draft
    };
    let mut sealed = draft.seal(&env).await.expect("seal");
    assert_eq!(sealed.id, Some(9));
    sealed.id = None;
    assert!(matches!(
        sealed.open(&env).await,
        Err(Error::MissingRowId { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_encrypted_field_can_be_updated_alone() {
    for kind in support::ALL {
        let db = Db::connect(kind).await;
        let env = support::envelope(&db, CacheLimits::default());
        let table = support::unique("derive_upd");
        db.create_blob_table(&table, AllTypes::ENCRYPTED_COLUMNS)
            .await;
        let mut model = full(1);
        insert_all(&db, &table, &[model.seal(&env).await.expect("seal")]).await;

        model.opt_address = None;
        model.text = "Ada King, Countess of Lovelace".into();
        let text = model.seal_text(&env).await.expect("seal one field");
        let address: Option<sqlx_envelope::Sealed> =
            model.seal_opt_address(&env).await.expect("seal");
        assert!(address.is_none());
        on_db!(&db, |pool, DB| {
            let mut qb = sqlx::QueryBuilder::<DB>::new(format!("UPDATE {table} SET text = "));
            qb.push_bind(&text)
                .push(", opt_address = ")
                .push_bind(&address)
                .push(" WHERE id = ")
                .push_bind(model.id);
            qb.build().execute(pool).await.expect("update");
        });
        let rows: Vec<AllTypesSealed> = select_all!(&db, AllTypesSealed, table, "id");
        let opened = AllTypes::open_all(&env, rows).await.expect("open");
        assert_eq!(opened, vec![model.clone()], "{kind:?}");
    }
}
