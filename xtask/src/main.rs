//! Workspace automation, run as `cargo xtask <command>`:
//!
//! * `ci`: the whole gate, in order: `cargo fmt --check`, clippy with `-D warnings`, every test
//!   (unit, integration, doctests), rustdoc with `-D warnings`, and `tidy`. The tests get a
//!   PostgreSQL server: `AMBOY_TEST_DATABASE_URL`, else the local default, else a throwaway
//!   cluster started from the machine's PostgreSQL binaries (see `postgres.rs`); the schemas
//!   earlier runs left are dropped first.
//! * `tidy`: the layering rules: allowed dependencies between crates, workspace lints everywhere,
//!   every `lib.rs` opening with `//!`. Also run by `cargo test -p xtask`.
//! * `bench local [jobs] [filter] [workers] [--mimalloc]`: the in-memory throughput benchmark of
//!   the local queues against the reference hand-offs (one JSON line per case), on the system's
//!   allocator or mimalloc.
//! * `bench peers [jobs] [workers] [--mimalloc]`: the limited-size queue beside apalis and the
//!   reference hand-offs, in one run (one JSON line per case). It builds `bench/peers`, a crate
//!   outside the workspace with its own `Cargo.lock`, so that nothing else depends on apalis.
//! * `bench postgres [jobs] [filter]`: the PostgreSQL queue on the server of
//!   `AMBOY_BENCH_DATABASE_URL` (default: the local one): `put_many`, burn-down by 1 process ×
//!   8, 32, 64 workers and 2 processes × 32, pickup latency, bytes per pending job, each case in
//!   a fresh schema; then the PostgreSQL peers of `../shared/peers` (graphile_worker in Rust and
//!   in Node) in the same run, and our ratio to each (one JSON line per case).
//! * `bench rest [jobs] [filter]`: jobs created per second through the REST service (one
//!   client, 64 requests in flight) into an in-memory and a PostgreSQL queue, and management's
//!   counts on 1,000,000 PostgreSQL jobs, directly and through the service, in milliseconds.
//! * `bench micro`: the criterion benchmarks of the hot path.
//!
//! std only, so it builds in seconds; it shells out to `$CARGO` and echoes each command.

mod postgres;
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy::check(&workspace_root()).map_err(|problems| problems.join("\n")),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|tidy|bench local [jobs] [filter] [workers] [--mimalloc]\
                 |bench peers [jobs] [workers] [--mimalloc]|bench postgres [jobs] [filter]\
                 |bench rest [jobs] [filter]|bench micro>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `cargo <args>` in the workspace root with extra environment, echoing it first.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let shown: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!("$ {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(cargo())
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn has_nextest() -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// `cargo run` of a benchmark in release: `target` selects it (package and binary, or
/// manifest), `--mimalloc` among `args` turns on the `mimalloc` feature, and the other `args`
/// are passed on.
fn run_bench(target: &[&str], args: &[String]) -> Result<(), String> {
    let mut command = vec!["run", "--locked", "--release"];
    command.extend(target);
    if args.iter().any(|arg| arg == "--mimalloc") {
        command.extend(["--features", "mimalloc"]);
    }
    command.push("--");
    command.extend(
        args.iter()
            .map(String::as_str)
            .filter(|arg| *arg != "--mimalloc"),
    );
    run(&command, &[])
}

fn bench(args: &[String]) -> Result<(), String> {
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("local") | None => run_bench(&["-p", "amboy-bench", "--bin", "local"], rest),
        // A workspace of its own (it depends on apalis), built into `bench/peers/target`.
        Some("peers") => run_bench(&["--manifest-path", "bench/peers/Cargo.toml"], rest),
        Some("postgres") => run_bench(&["-p", "amboy-bench", "--bin", "postgres"], rest),
        Some("rest") => run_bench(&["-p", "amboy-bench", "--bin", "rest"], rest),
        Some("micro") => run(
            &[
                "bench",
                "--locked",
                "-p",
                "amboy-bench",
                "--bench",
                "hot_path",
            ],
            &[],
        ),
        Some(other) => Err(format!(
            "unknown benchmark '{other}': use 'local', 'peers', 'postgres', 'rest' or 'micro'"
        )),
    }
}

fn ci() -> Result<(), String> {
    run(&["fmt", "--all", "--", "--check"], &[])?;
    run(
        &[
            "clippy",
            "--locked",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    let server = postgres::server(&workspace_root())?;
    postgres::drop_test_schemas(&server.url);
    let database = [("AMBOY_TEST_DATABASE_URL", server.url.as_str())];
    if has_nextest() {
        run(
            &[
                "nextest",
                "run",
                "--locked",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
            &database,
        )?;
    } else {
        run(
            &[
                "test",
                "--locked",
                "--workspace",
                "--all-features",
                "--lib",
                "--bins",
                "--tests",
            ],
            &database,
        )?;
    }
    run(
        &["test", "--locked", "--workspace", "--all-features", "--doc"],
        &database,
    )?;
    postgres::drop_test_schemas(&server.url);
    drop(server);
    run(
        &[
            "doc",
            "--locked",
            "--workspace",
            "--all-features",
            "--no-deps",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("$ cargo xtask tidy");
    tidy::check(&workspace_root()).map_err(|problems| problems.join("\n"))?;
    eprintln!("xtask: ci passed");
    Ok(())
}
