//! Compile errors of `#[derive(Encrypted)]`: one error per mistake, at the span
//! of the mistake. Snapshots in `tests/ui/*.stderr`; regenerate with
//! `TRYBUILD=overwrite cargo test -p sqlx-envelope-ui --test ui` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
