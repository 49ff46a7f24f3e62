//! The `sqlx-envelope` binary against PostgreSQL, MariaDB and SQLite: the whole
//! life of an encrypted column through the CLI, with its documented exit codes.

mod jobs_support;
mod support;

use std::path::Path;
use std::process::Output;

use jobs_support::*;
use sqlx_envelope::{Context, KeyState, RowId};
use support::{ALL, Db, Kind, isolated_url, unique};

const ROWS: i64 = 500;

fn run(url: &str, keys: &Path, args: &[&str]) -> Output {
    let out = cli(url, keys)
        .args(args)
        .output()
        .expect("run sqlx-envelope");
    eprintln!(
        "$ sqlx-envelope {}\n{}{}-> {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn life_cycle(kind: Kind) {
    let db = Db::connect(kind).await;
    let url = db_url(&db);
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (random_key(), random_key());
    let keys1 = write_key_file(dir.path(), "v1.json", "app/1", &[("app/1", k1)]);
    let keys2 = write_key_file(
        dir.path(),
        "v2.json",
        "app/2",
        &[("app/1", k1), ("app/2", k2)],
    );
    let keys_new = write_key_file(dir.path(), "new.json", "app/2", &[("app/2", k2)]);
    let table = unique("jobs_cli");
    let col = format!("{table}.email_enc");

    // Help a new user can read, usage errors are 2.
    let help = run(&url, &keys1, &["--help"]);
    assert_eq!(code(&help), 0);
    for word in [
        "reencrypt",
        "backfill",
        "Exit codes",
        "DATABASE_URL",
        "SQLX_ENVELOPE_LOCAL_KEYS_FILE",
    ] {
        assert!(stdout(&help).contains(word), "--help mentions {word}");
    }
    assert_eq!(
        code(&run(&url, &keys1, &["reencrypt", "--no-such-flag"])),
        2
    );
    assert_eq!(
        code(&run(&url, &keys1, &["keys", "destroy", "not-a-number"])),
        2
    );
    // Values that could only overflow, stall or undo: refused as usage (2)
    // before anything runs.
    let job = ["reencrypt", "--table", "t", "--column", "c", "--key", "1"];
    for extra in [
        &["--rate", "0"][..],
        &["--rate", "1e-17"],
        &["--rate", "NaN"],
        &["--lease-secs", "0"],
        &["--lease-secs", "18446744073709551615"],
        &["--restart", "--dry-run"],
        &["--max-connections", "0"],
    ] {
        let out = run(&url, &keys1, &[&job[..], extra].concat());
        assert_eq!(
            code(&out),
            2,
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &["keys", "destroy", "1", "--settle-secs", "10000000000000000"]
        )),
        2
    );
    // No database: an error (1), not a crash.
    let mut no_db = cli("", &keys1);
    no_db.env_remove("DATABASE_URL").args(["keys", "list"]);
    assert_eq!(no_db.output().unwrap().status.code(), Some(1));

    assert_eq!(code(&run(&url, &keys1, &["migrate"])), 0);

    // A table with plaintext, and its new encrypted column.
    let text = if kind == Kind::MySql {
        "VARCHAR(255)"
    } else {
        "TEXT"
    };
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, email {text} NULL, email_enc {} NULL)",
        db.blob_type()
    ))
    .await;
    let values: Vec<String> = (1..=ROWS)
        .map(|i| format!("({i}, 'u{i}@example.com')"))
        .collect();
    db.exec(&format!(
        "INSERT INTO {table} (id, email) VALUES {}",
        values.join(", ")
    ))
    .await;

    let backfill = [
        "--table",
        &table,
        "--plaintext-column",
        "email",
        "--encrypted-column",
        "email_enc",
    ];
    // Dropping plaintext before the backfill is refused (3), column kept.
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &[&["drop-plaintext"][..], &backfill].concat()
        )),
        3
    );
    let v = [&["verify", "--column", &col, "--plaintext-column", "email"][..]].concat();
    assert_eq!(
        code(&run(&url, &keys1, &v)),
        3,
        "verify before the backfill finds plaintext rows"
    );
    let out = run(
        &url,
        &keys1,
        &[
            &["backfill", "--batch-size", "64", "--chunk-rows", "100"][..],
            &backfill,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains(&format!("written={ROWS}")));
    assert_eq!(code(&run(&url, &keys1, &v)), 0);
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &[&["drop-plaintext"][..], &backfill].concat()
        )),
        0
    );

    // keys list / status show the data key and the master key.
    let store = db.key_store();
    let old = store
        .list(&sqlx_envelope::store::KeyFilter::all().kind(sqlx_envelope::KeyKind::Data))
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.scope == table)
        .unwrap()
        .id;
    let list = stdout(&run(&url, &keys1, &["keys", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&table) && l.contains("active") && l.contains("local:app/1"))
    );
    // A reader that goes away (`keys list | head -1`) stops the command with
    // 141, as SIGPIPE would, not a panic.
    let mut closed = cli(&url, &keys1)
        .args(["keys", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sqlx-envelope");
    drop(closed.stdout.take());
    let out = closed.wait_with_output().unwrap();
    assert_eq!(code(&out), 141, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = stdout(&run(&url, &keys1, &["status", "--column", &col]));
    assert!(status.contains(&format!("{ROWS} encrypted")), "{status}");
    assert!(
        status.contains(&format!("master key local:app/1: {ROWS} rows")),
        "{status}"
    );

    // Retire the data key; verify and destroy refuse while rows use it (3).
    let id = old.get().to_string();
    assert_eq!(code(&run(&url, &keys1, &["keys", "retire", &id])), 0);
    assert_eq!(
        store.get(old).await.unwrap().unwrap().state,
        KeyState::DecryptOnly
    );
    // Reactivate undoes a suspend only: on a key that is not retired it
    // refuses (1) and changes nothing; after a suspend it reopens the key.
    for (command, exit, state) in [
        ("reactivate", 1, KeyState::DecryptOnly),
        ("suspend", 0, KeyState::Retired),
        ("reactivate", 0, KeyState::DecryptOnly),
    ] {
        assert_eq!(code(&run(&url, &keys1, &["keys", command, &id])), exit);
        assert_eq!(
            store.get(old).await.unwrap().unwrap().state,
            state,
            "{command}"
        );
    }
    // Every id is checked before any is changed: an unknown one among them
    // leaves the others as they were.
    let out = run(&url, &keys1, &["keys", "suspend", &id, "987654321"]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing was changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store.get(old).await.unwrap().unwrap().state,
        KeyState::DecryptOnly
    );
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &["verify", "--column", &col, "--key", &id]
        )),
        3
    );
    // Destroy first waits for the key's seal horizon (another process may
    // still seal under it): exit 4, saying how long; the state is untouched.
    let early = run(&url, &keys1, &["keys", "destroy", &id]);
    assert_eq!(
        code(&early),
        4,
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("seal horizon"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    // This test's processes are all stopped, so it may skip the horizon; the
    // rows still refuse the destroy (3).
    let destroy_now = ["keys", "destroy", &id, "--unsafe-skip-seal-horizon"];
    assert_eq!(code(&run(&url, &keys1, &destroy_now)), 3);
    // A branch key is not a data key: no row count could stop its
    // destruction (values carry data-key ids), so destroy refuses it (1),
    // naming shred-tenant; the key is untouched.
    let parent = store
        .get(old)
        .await
        .unwrap()
        .unwrap()
        .parent
        .unwrap()
        .parent;
    let branch = store.get(parent).await.unwrap().unwrap();
    assert_eq!(branch.kind, sqlx_envelope::KeyKind::Branch);
    let branch_id = branch.id.get().to_string();
    let refused = run(
        &url,
        &keys1,
        &["keys", "destroy", &branch_id, "--unsafe-skip-seal-horizon"],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(code(&refused), 1, "{said}");
    assert!(
        said.contains("is a branch key, not a data key") && said.contains("shred-tenant"),
        "{said}"
    );
    assert_eq!(
        store.get(branch.id).await.unwrap().unwrap().state,
        branch.state
    );
    assert_eq!(
        store.get(old).await.unwrap().unwrap().state,
        KeyState::DecryptOnly
    );

    // Dry run writes nothing; the real run moves every row.
    let reenc = [
        "reencrypt",
        "--table",
        &table,
        "--column",
        "email_enc",
        "--key",
        &id,
    ];
    let dry = run(&url, &keys1, &[&reenc[..], &["--dry-run"]].concat());
    assert_eq!(code(&dry), 0);
    assert!(stdout(&dry).contains(&format!("written={ROWS}")));
    // A dry run whose rows do not open (a configuration without the master
    // key) fails, naming the count: it is not "ok".
    let dry_bad = run(&url, &keys_new, &[&reenc[..], &["--dry-run"]].concat());
    assert_ne!(code(&dry_bad), 0, "{}", stdout(&dry_bad));
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &["verify", "--column", &col, "--key", &id]
        )),
        3
    );
    assert_eq!(code(&run(&url, &keys1, &reenc)), 0);
    assert_eq!(
        code(&run(
            &url,
            &keys1,
            &["verify", "--column", &col, "--key", &id]
        )),
        0
    );
    assert_eq!(code(&run(&url, &keys1, &destroy_now)), 0);
    assert_eq!(
        store.get(old).await.unwrap().unwrap().state,
        KeyState::Destroyed
    );

    // Mistakes a rotation is told about: a local key named without its
    // `local:` prefix (refused, with the name meant), an old master key no key
    // is wrapped under (nothing done, said so).
    let unprefixed = run(&url, &keys2, &["keys", "rotate", "--to", "app/2"]);
    let said = String::from_utf8_lossy(&unprefixed.stderr);
    assert_eq!(code(&unprefixed), 1, "{said}");
    assert!(said.contains("did you mean local:app/2?"), "{said}");
    let typo = run(
        &url,
        &keys2,
        &[
            "keys",
            "rotate",
            "--to",
            "local:app/2",
            "--from",
            "local:app/9",
        ],
    );
    let said = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(code(&typo), 0, "{said}");
    assert!(
        said.contains("note: no key matched --from local:app/9"),
        "{said}"
    );
    assert!(!stdout(&typo).contains("next:"), "{}", stdout(&typo));

    // Master-key rotation app/1 -> app/2, old blobs deleted; rows unchanged.
    let before = all_rows(&db, &table, "email_enc").await;
    let rw = run(
        &url,
        &keys2,
        &[
            "keys",
            "rotate",
            "--to",
            "local:app/2",
            "--scope",
            &table,
            "--delete-old",
        ],
    );
    assert_eq!(code(&rw), 0);
    assert!(
        stdout(&rw).contains("rewrapped=1"),
        "one live data key in this scope"
    );
    assert_eq!(all_rows(&db, &table, "email_enc").await, before);
    let env = envelope_from_file(&db, &keys_new);
    for (id, v) in &before {
        let row = RowId::from(*id);
        let pt = env
            .open_bytes(
                &Context::new(&table, "email_enc", &row),
                v.as_deref().unwrap(),
            )
            .await
            .expect("opens with the new master key only");
        assert_eq!(&*pt, format!("u{id}@example.com").as_bytes());
    }
    let status = stdout(&run(&url, &keys_new, &["status", "--column", &col]));
    assert!(
        status.contains(&format!("master key local:app/2: {ROWS} rows")),
        "{status}"
    );
    assert!(!status.contains("local:app/1"), "{status}");

    // verify --open proves which configuration opens what is stored: the old
    // key file (app/1 only) no longer opens the rotated keys (3, naming them),
    // the new one (app/2 only) does (0).
    let old_cfg = run(&url, &keys1, &["verify", "--column", &col, "--open"]);
    assert_eq!(code(&old_cfg), 3, "{}", stdout(&old_cfg));
    assert!(
        stdout(&old_cfg).contains("do not open"),
        "{}",
        stdout(&old_cfg)
    );
    let new_cfg = run(&url, &keys_new, &["verify", "--column", &col, "--open"]);
    assert_eq!(code(&new_cfg), 0, "{}", stdout(&new_cfg));
    assert!(
        stdout(&new_cfg).contains("0 do not open"),
        "{}",
        stdout(&new_cfg)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_life_cycle_postgres() {
    life_cycle(ALL[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_life_cycle_mariadb() {
    life_cycle(ALL[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_life_cycle_sqlite() {
    life_cycle(ALL[2]).await;
}

/// Any command on a database whose key store was never migrated fails with an
/// error that says to run `migrate` (on every database: each names a missing
/// table its own way); once it has run, the same command works. A SQLite URL
/// naming a file that does not exist says how to create it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_before_migrate_says_to_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "k.json", "app/1", &[("app/1", random_key())]);
    for kind in ALL {
        // A namespace of its own where nothing was migrated.
        let db = Db::connect(kind).await;
        let name = unique("t");
        let url = match kind {
            Kind::Postgres => {
                db.exec(&format!("CREATE SCHEMA {name}")).await;
                isolated_url(kind, &name)
            }
            Kind::MySql => {
                db.exec(&format!("CREATE DATABASE {name}")).await;
                isolated_url(kind, &name)
            }
            Kind::Sqlite => format!("sqlite:{}?mode=rwc", dir.path().join("fresh.db").display()),
        };
        for args in [&["keys", "list"][..], &["status"]] {
            let out = run(&url, &keys, args);
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(code(&out), 1, "{kind:?} {args:?}: {said}");
            assert!(
                said.contains("do not exist in this database: run the `migrate` command first"),
                "{kind:?} {args:?}: {said}"
            );
        }
        if kind == Kind::Sqlite {
            // A job on a table that exists, before migrate: the same advice.
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, email_enc BLOB)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO people (id, email) VALUES (1, 'a@example.com')")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let backfill = [
                "backfill",
                "--table",
                "people",
                "--plaintext-column",
                "email",
                "--encrypted-column",
                "email_enc",
            ];
            let out = run(&url, &keys, &backfill);
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(code(&out), 1, "{said}");
            assert!(said.contains("run the `migrate` command first"), "{said}");
        }
        assert_eq!(code(&run(&url, &keys, &["migrate"])), 0);
        assert_eq!(code(&run(&url, &keys, &["keys", "list"])), 0);
    }
    // A SQLite file that does not exist: the error says how to create it.
    let missing = format!("sqlite:{}", dir.path().join("missing.db").display());
    let out = run(&missing, &keys, &["migrate"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("end the URL with ?mode=rwc"), "{said}");
    assert!(!dir.path().join("missing.db").exists());
}

/// Bring your own key through the CLI: a tenant mapped to its own master key in
/// a `--tenant-keys` file. `verify --open` opens that tenant's values only with
/// the mapping; `keys shred-tenant` refuses without `--yes`, then destroys the
/// tenant's keys, prints the backup advice, and leaves the other tenant intact.
/// Values bound to another column name than their SQL column
/// (`--context-column`, for a column to be renamed later): the backfill
/// writes them so, and verify opens them only told the same name. SQLite
/// only: the flag is the CLI's plumbing, the same on every database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_context_column_backfill_and_verify() {
    let db = Db::connect(Kind::Sqlite).await;
    let url = db_url(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "k.json", "app/1", &[("app/1", random_key())]);
    let table = unique("jobs_ctx");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, email TEXT NULL, email_enc BLOB NULL)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {table} (id, email) VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, NULL)"
    ))
    .await;
    assert_eq!(code(&run(&url, &keys, &["migrate"])), 0);
    let backfill = [
        "backfill",
        "--table",
        &table,
        "--plaintext-column",
        "email",
        "--encrypted-column",
        "email_enc",
        "--context-column",
        "email",
    ];
    assert_eq!(code(&run(&url, &keys, &backfill)), 0);
    let col = format!("{table}.email_enc");
    let verify = ["verify", "--column", &col, "--plaintext-column", "email"];
    let named = [&verify[..], &["--context-column", "email"]].concat();
    let out = run(&url, &keys, &named);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    // Without the name the values were bound to, none opens.
    assert_eq!(code(&run(&url, &keys, &verify)), 3);
    // The name belongs to one column.
    let other = format!("{table}.email");
    let two = [&named[..], &["--column", &other]].concat();
    assert_eq!(code(&run(&url, &keys, &two)), 1);

    // A tenant keys file with a key pasted where a description belongs: an
    // error that says where, never what.
    let pasted = "c2VjcmV0IGtleSBtYXRlcmlhbCwgbm90IHRvIGJlIHByaW50ZWQ=";
    let tenant_keys = dir.path().join("tenants.json");
    std::fs::write(&tenant_keys, format!("{{\"acme\": \"{pasted}\"}}")).unwrap();
    let with_tenants = [
        &named[..],
        &["--tenant-keys", tenant_keys.to_str().unwrap()],
    ]
    .concat();
    let out = run(&url, &keys, &with_tenants);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("line 1, column"), "{said}");
    assert!(!said.contains(pasted), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tenant_keys_and_shredding() {
    for kind in ALL {
        let db = Db::connect(kind).await;
        let url = db_url(&db);
        let dir = tempfile::tempdir().unwrap();
        let (shared, acme_key) = (random_key(), random_key());
        let keys = write_key_file(dir.path(), "shared.json", "app/1", &[("app/1", shared)]);
        let acme = write_key_file(dir.path(), "acme.json", "acme/1", &[("acme/1", acme_key)]);
        let mapping = dir.path().join("tenants.json");
        std::fs::write(&mapping, r#"{"acme": {"local_keys_file": "acme.json"}}"#).unwrap();

        // The application: acme's values under acme's own master key.
        let app = sqlx_envelope::Envelope::builder()
            .keyring(sqlx_envelope::LocalKeyring::from_file(&keys).unwrap())
            .tenant_keyring(
                "acme",
                sqlx_envelope::LocalKeyring::from_file(&acme).unwrap(),
            )
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let table = unique("jobs_cli_t");
        db.create_blob_table(&table, &["secret"]).await;
        let mut rows = Vec::new();
        for (id, tenant) in [(1_i64, "acme"), (2, "globex")] {
            let row = RowId::from(id);
            let ctx = Context::new(&table, "secret", &row).with_tenant(tenant);
            rows.push((id, app.seal(&ctx, b"s").await.unwrap().into_bytes()));
        }
        insert_many(&db, &table, "secret", &rows).await;
        let col = format!("{table}.secret");
        let tenant_flag = format!("--tenant-keys={}", mapping.display());

        let without = run(&url, &keys, &["verify", "--column", &col, "--open"]);
        assert_eq!(
            code(&without),
            3,
            "{kind:?}: acme's key needs acme's master key"
        );
        let with = run(
            &url,
            &keys,
            &[&tenant_flag, "verify", "--column", &col, "--open"],
        );
        assert_eq!(code(&with), 0, "{kind:?}: {}", stdout(&with));

        let refused = run(&url, &keys, &[&tenant_flag, "keys", "shred-tenant", "acme"]);
        assert_eq!(code(&refused), 1, "{kind:?}: --yes is required");
        let shred = run(
            &url,
            &keys,
            &[&tenant_flag, "keys", "shred-tenant", "acme", "--yes"],
        );
        assert_eq!(code(&shred), 0, "{kind:?}");
        let out = stdout(&shred);
        assert!(out.contains("backups taken earlier"), "{out}");
        assert!(
            out.contains("local:acme/1"),
            "{kind:?}: names the master key: {out}"
        );

        // acme's value is gone for good; globex's still opens.
        let fresh = sqlx_envelope::Envelope::builder()
            .keyring(sqlx_envelope::LocalKeyring::from_file(&keys).unwrap())
            .tenant_keyring(
                "acme",
                sqlx_envelope::LocalKeyring::from_file(&acme).unwrap(),
            )
            .store_arc(db.key_store())
            .build()
            .unwrap();
        let (r1, r2) = (RowId::from(1_i64), RowId::from(2_i64));
        let acme_err = fresh
            .open_bytes(
                &Context::new(&table, "secret", &r1).with_tenant("acme"),
                &rows[0].1,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                acme_err,
                sqlx_envelope::Error::KeyNotUsable {
                    state: KeyState::Destroyed,
                    ..
                }
            ),
            "{kind:?}: {acme_err:?}"
        );
        let globex = fresh
            .open_bytes(
                &Context::new(&table, "secret", &r2).with_tenant("globex"),
                &rows[1].1,
            )
            .await
            .unwrap();
        assert_eq!(&*globex, b"s");
    }
}

/// KMS keys in two regions from the command line (two moto servers, one per
/// region, each key's region taken from its ARN, one endpoint per region):
/// every branch key is wrapped under both; with the first region's server
/// gone, `verify --open` still opens every key through the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_kms_keys_in_two_regions_fail_over() {
    use support::moto::Moto;
    let east = tokio::task::spawn_blocking(Moto::start);
    let west = tokio::task::spawn_blocking(Moto::start);
    let (mut east, west) = (east.await.unwrap(), west.await.unwrap());
    let key_east = east.create_key(&east.client("us-east-1")).await;
    let key_west = west.create_key(&west.client("eu-west-1")).await;
    assert!(key_east.contains(":us-east-1:") && key_west.contains(":eu-west-1:"));
    let db = Db::connect(Kind::Sqlite).await;
    let url = db_url(&db);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = format!(
        "us-east-1={},eu-west-1={}",
        east.endpoint(),
        west.endpoint()
    );
    let kms = |args: &[&str]| {
        let out = cli(&url, &dir.path().join("absent.json"))
            .env_remove("SQLX_ENVELOPE_LOCAL_KEYS_FILE")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .env(
                "SQLX_ENVELOPE_KMS_KEY_IDS",
                format!("{key_east},{key_west}"),
            )
            .env("SQLX_ENVELOPE_KMS_ENDPOINT", &endpoints)
            .args(args)
            .output()
            .expect("run sqlx-envelope");
        eprintln!(
            "$ sqlx-envelope {}\n{}{}-> {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    };
    assert_eq!(code(&kms(&["migrate"])), 0);

    // The application seals under the same two regions.
    let keyring = |moto: &Moto, region: &str, key: &str| {
        let client = moto.client(region);
        let key = key.to_owned();
        async move {
            std::sync::Arc::new(
                sqlx_envelope::keyring::KmsKeyring::builder()
                    .client(client)
                    .key(key)
                    .build()
                    .await
                    .unwrap(),
            ) as std::sync::Arc<dyn sqlx_envelope::Keyring>
        }
    };
    let multi = sqlx_envelope::MultiKeyring::new(vec![
        keyring(&east, "us-east-1", &key_east).await,
        keyring(&west, "eu-west-1", &key_west).await,
    ])
    .unwrap();
    let app = sqlx_envelope::Envelope::builder()
        .keyring(multi)
        .store_arc(db.key_store())
        .build()
        .unwrap();
    let table = unique("jobs_cli_kms");
    db.create_blob_table(&table, &["secret"]).await;
    let mut rows = Vec::new();
    for id in 1..=5_i64 {
        let row = RowId::from(id);
        let ctx = Context::new(&table, "secret", &row);
        rows.push((id, app.seal(&ctx, b"s").await.unwrap().into_bytes()));
    }
    insert_many(&db, &table, "secret", &rows).await;
    let col = format!("{table}.secret:id");

    let list = kms(&["keys", "list"]);
    assert_eq!(code(&list), 0);
    let listed = stdout(&list);
    assert!(
        listed
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("branch"))
            .all(|l| l.contains(&key_east) && l.contains(&key_west))
            && listed.contains("  branch  "),
        "every branch key wrapped in both regions ({key_east}, {key_west}): {listed}"
    );
    let both = kms(&["verify", "--column", &col, "--open"]);
    assert_eq!(code(&both), 0, "{}", stdout(&both));
    east.kill();
    let failover = kms(&["verify", "--column", &col, "--open"]);
    assert_eq!(
        code(&failover),
        0,
        "the second region opens every key: {}",
        stdout(&failover)
    );
    assert!(
        stdout(&failover).contains("0 do not open"),
        "{}",
        stdout(&failover)
    );
}
