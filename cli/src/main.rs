//! The `rbee` binary: everything lives in the `rbee_cli` library; this only hands over the exit code.

fn main() -> std::process::ExitCode {
    rbee_cli::main()
}
