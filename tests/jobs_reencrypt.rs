//! Re-encryption after a data key is retired, on PostgreSQL, MariaDB and SQLite:
//! killed workers resume, application writes survive, two workers share a table
//! without processing a row twice, and the verify pass gates key destruction.

mod jobs_support;
mod support;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jobs_support::*;
use sqlx_envelope::jobs::{
    DestroyOptions, JobError, Target, count_by_key, count_rows_on, destroy_key, job_status,
};

/// These tests are about rows: the processes that could seal under the key are
/// this test's own (stopped before destroy), so the seal horizon is not waited
/// for here (`tests/lifecycle.rs` tests the horizon with a manual clock).
fn rows_only() -> DestroyOptions {
    DestroyOptions::new().unsafe_skip_seal_horizon()
}
use sqlx_envelope::{Context, KeyState, RowId};
use support::{ALL, Db, Kind, unique};

const ROWS: i64 = 100_000;

fn spawn_worker(
    url: &str,
    keys: &std::path::Path,
    table: &str,
    key: u64,
    worker: &str,
    rate: Option<u32>,
) -> Child {
    let mut c = cli(url, keys);
    c.args([
        "reencrypt",
        "--table",
        table,
        "--column",
        "secret",
        "--key",
        &key.to_string(),
        "--worker-id",
        worker,
        "--batch-size",
        "500",
        "--chunk-rows",
        "5000",
    ]);
    if let Some(r) = rate {
        c.args(["--rate", &r.to_string()]);
    }
    c.stdout(Stdio::null()).stderr(Stdio::inherit());
    c.spawn().expect("spawn sqlx-envelope reencrypt")
}

/// Kill a single worker at several random points, resume with two workers,
/// while the application keeps writing.
async fn kill_and_resume(kind: Kind) {
    let started = Instant::now();
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let table = unique("jobs_kill");
    let old = seed(&db, &envelope, &table, ROWS).await;
    let seeded = started.elapsed();
    envelope
        .set_key_state(old, KeyState::DecryptOnly)
        .await
        .unwrap();
    let target = Target::new(&table, "id", "secret").unwrap();
    let url = db_url(&db);

    // The application keeps writing (new values, sealed under the new active
    // key) to random rows, with plain unconditional UPDATEs.
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (db, envelope, table, stop) =
            (db.clone(), envelope.clone(), table.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written: BTreeMap<i64, String> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = (rand_u64() % ROWS as u64) as i64 + 1;
                let pt = format!("app-{id}-{n}");
                let row = RowId::from(id);
                let sealed = envelope
                    .seal(&Context::new(&table, "secret", &row), pt.as_bytes())
                    .await
                    .unwrap();
                app_update(&db, &table, "secret", id, sealed.as_bytes()).await;
                written.insert(id, pt);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (written, n)
        })
    };

    // Kill the worker (SIGKILL) at three random points.
    let mut marks: Vec<u64> = (0..3).map(|_| 10_000 + rand_u64() % 60_000).collect();
    marks.sort_unstable();
    let job = format!("reencrypt:{table}.secret:{}", old.get());
    for mark in marks {
        let mut child = spawn_worker(&url, &keys, &table, old.get(), "w1", Some(20_000));
        loop {
            let st = job_status(&pool, &job).await.unwrap();
            if st.written >= mark {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the worker exited before reaching {mark} rows (status {st:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not finished");
        let left = count_rows_on(&pool, &target, &[old]).await.unwrap();
        assert!(left > 0, "work remains after the kill at {mark}");
        eprintln!("{kind:?}: killed at >= {mark} rows written, {left} rows left on {old}");
    }

    // The key cannot be destroyed while rows reference it; the refusal leaves
    // it decrypt-only.
    match destroy_key(&envelope, &pool, &rows_only(), old).await {
        Err(JobError::RowsRemain { rows, .. }) => assert!(rows > 0),
        other => panic!("destroy must be refused, got {other:?}"),
    }
    assert_eq!(
        envelope.store().get(old).await.unwrap().unwrap().state,
        KeyState::DecryptOnly
    );

    // Resume with two workers together (w1 takes its own lease back at once).
    let mut a = spawn_worker(&url, &keys, &table, old.get(), "w1", None);
    let mut b = spawn_worker(&url, &keys, &table, old.get(), "w2", None);
    // Keep the application writing for part of the resumed run too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (app_writes, app_n) = app.await.unwrap();
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    assert!(sa.success() && sb.success(), "workers: {sa:?} {sb:?}");

    // Every row opens under a key that is not the old one, with the
    // application's last write where there was one and the seed elsewhere.
    let fresh = envelope_from_file(&db, &keys);
    let (opened, by_key) = open_all(&db, &fresh, &table).await;
    assert_eq!(opened.len(), ROWS as usize, "no row lost or added");
    assert!(!by_key.contains_key(&old), "keys in use: {by_key:?}");
    for (id, pt) in &opened {
        let want = app_writes
            .get(id)
            .cloned()
            .unwrap_or_else(|| seed_plaintext(*id));
        assert_eq!(pt, &want, "row {id}");
    }
    assert_eq!(count_rows_on(&pool, &target, &[old]).await.unwrap(), 0);
    let counts = count_by_key(&pool, &target).await.unwrap();
    assert_eq!(counts.encrypted(), ROWS as u64);
    assert_eq!(counts.unrecognized, 0);

    // The checkpoints are exact: the job wrote each untouched row exactly once,
    // and at most the rows the application touched on top.
    let st = job_status(&pool, &job).await.unwrap();
    assert!(st.is_done(), "{st:?}");
    assert_eq!(st.failed, 0);
    let touched = app_writes.len() as u64;
    assert!(
        st.written + touched >= ROWS as u64 && st.written <= ROWS as u64,
        "written {} with {touched} rows touched by the application: {st:?}",
        st.written
    );
    assert!(
        st.conflicts <= app_n,
        "conflicts only come from application writes"
    );

    // Now the old key can go, and values under it are gone for good.
    destroy_key(&envelope, &pool, &rows_only(), old)
        .await
        .unwrap();
    assert_eq!(
        envelope.store().get(old).await.unwrap().unwrap().state,
        KeyState::Destroyed
    );
    eprintln!(
        "{kind:?}: {ROWS} rows seeded in {seeded:?}; kill/resume run done in {:?}; {app_n} application writes to {touched} rows, {} conflicts",
        started.elapsed(),
        st.conflicts
    );
}

/// Two worker processes started together split a table exactly.
async fn two_workers(kind: Kind) {
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let table = unique("jobs_two");
    let old = seed(&db, &envelope, &table, ROWS).await;
    envelope
        .set_key_state(old, KeyState::DecryptOnly)
        .await
        .unwrap();
    let url = db_url(&db);
    let t0 = Instant::now();
    let mut a = spawn_worker(&url, &keys, &table, old.get(), "a", None);
    let mut b = spawn_worker(&url, &keys, &table, old.get(), "b", None);
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    let took = t0.elapsed();
    assert!(sa.success() && sb.success(), "workers: {sa:?} {sb:?}");
    let job = format!("reencrypt:{table}.secret:{}", old.get());
    let st = job_status(&pool, &job).await.unwrap();
    // A row processed twice would be written twice (written > ROWS) or lose a
    // compare-and-swap (conflicts > 0): neither happened.
    assert!(st.is_done());
    assert_eq!(st.written, ROWS as u64, "{st:?}");
    assert_eq!(st.scanned, ROWS as u64, "{st:?}");
    assert_eq!(st.conflicts, 0, "{st:?}");
    assert_eq!(st.failed, 0, "{st:?}");
    let (opened, by_key) = open_all(&db, &envelope_from_file(&db, &keys), &table).await;
    assert_eq!(opened.len(), ROWS as usize);
    assert!(!by_key.contains_key(&old));
    assert!(opened.iter().all(|(id, pt)| *pt == seed_plaintext(*id)));
    eprintln!(
        "{kind:?}: two workers re-encrypted {ROWS} rows in {took:?} ({:.0} rows/s); chunks by worker: {:?}",
        ROWS as f64 / took.as_secs_f64(),
        st.workers
    );
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_kill_resume_postgres() {
    kill_and_resume(ALL[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_kill_resume_mariadb() {
    kill_and_resume(ALL[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_kill_resume_sqlite() {
    kill_and_resume(ALL[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_two_workers_postgres() {
    two_workers(ALL[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_two_workers_mariadb() {
    two_workers(ALL[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_two_workers_sqlite() {
    two_workers(ALL[2]).await;
}

/// Ctrl-C (SIGINT) stops a worker cleanly (exit 130, lease released); a
/// worker that dies (SIGKILL) keeps its lease until it expires, then a worker
/// with another id takes its chunk over from the checkpoint.
async fn interrupt_and_takeover(kind: Kind) {
    const N: i64 = 6_000;
    let db = Db::connect(kind).await;
    let pool = job_pool(&db);
    let dir = tempfile::tempdir().unwrap();
    let keys = write_key_file(dir.path(), "keys.json", "app/1", &[("app/1", random_key())]);
    let envelope = envelope_from_file(&db, &keys);
    let table = unique("jobs_lease");
    let old = seed(&db, &envelope, &table, N).await;
    envelope
        .set_key_state(old, KeyState::DecryptOnly)
        .await
        .unwrap();
    let url = db_url(&db);
    let job = format!("reencrypt:{table}.secret:{}", old.get());
    let worker = |id: &str| {
        let mut c = cli(&url, &keys);
        c.args([
            "reencrypt",
            "--table",
            &table,
            "--column",
            "secret",
            "--key",
            &old.get().to_string(),
            "--worker-id",
            id,
            "--batch-size",
            "100",
            "--chunk-rows",
            "2000",
            // Slow enough that the test's polling (which kills the second
            // worker inside its first chunk) has ~2 s of slack under load.
            "--rate",
            "500",
            "--lease-secs",
            "2",
        ]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.spawn().unwrap()
    };
    let wait_written = |at_least: u64| {
        let pool = pool.clone();
        let job = job.clone();
        async move {
            loop {
                let st = job_status(&pool, &job).await.unwrap();
                if st.written >= at_least {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // SIGINT: exit 130, the lease is released at once.
    let mut a = worker("polite");
    wait_written(500).await;
    let pid = a.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(a.wait().unwrap().code(), Some(130));
    let st = job_status(&pool, &job).await.unwrap();
    assert_eq!(st.chunks_running, 0, "{st:?}");
    assert!(st.written < N as u64);

    // SIGKILL in the middle of the first chunk (2,000 rows): the chunk stays
    // leased by the dead worker...
    let mut b = worker("dead");
    let before = wait_written(st.written + 300).await.written;
    assert!(before < 2_000, "still inside the first chunk");
    b.kill().unwrap();
    b.wait().unwrap();
    let st = job_status(&pool, &job).await.unwrap();
    assert_eq!(st.chunks_running, 1, "{st:?}");
    // ...until its lease expires; then another worker finishes the job.
    let mut opts = sqlx_envelope::jobs::JobOptions::default();
    opts.worker_id = "survivor".into();
    opts.lease = Duration::from_secs(2);
    let target = Target::new(&table, "id", "secret").unwrap();
    let report =
        sqlx_envelope::jobs::Job::reencrypt(envelope.clone(), pool.clone(), target, vec![old])
            .options(opts)
            .run()
            .await
            .unwrap();
    assert_eq!(report.remaining, 0);
    let st = job_status(&pool, &job).await.unwrap();
    assert!(st.is_done());
    assert_eq!(
        st.written, N as u64,
        "each row written exactly once: {st:?}"
    );
    assert_eq!(st.conflicts, 0);
    assert!(
        st.workers.iter().all(|w| !w.starts_with("dead")),
        "the dead worker's chunk was taken over: {:?}",
        st.workers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_interrupt_and_takeover_postgres() {
    interrupt_and_takeover(ALL[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_interrupt_and_takeover_mariadb() {
    interrupt_and_takeover(ALL[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_interrupt_and_takeover_sqlite() {
    interrupt_and_takeover(ALL[2]).await;
}
