//! The `amboy` command; everything is in the `amboy_cli` library.

fn main() -> std::process::ExitCode {
    amboy_cli::main()
}
