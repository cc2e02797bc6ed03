//! The `pgprism` binary: everything is in the library (`pgprism::cli_main`).

fn main() -> std::process::ExitCode {
    pgprism::cli_main()
}
