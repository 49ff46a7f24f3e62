//! `sqlx-envelope`: manage the keys and the encrypted data of an application
//! that uses the sqlx-envelope library. See [`sqlx_envelope::cli`]; an
//! application embeds the same tool with its models registered through
//! [`sqlx_envelope::cli::main_with_models`].

fn main() -> std::process::ExitCode {
    sqlx_envelope::cli::main()
}
