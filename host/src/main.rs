//! The `payflow-edge` binary: parses the command line and maps outcomes to exit codes.
//! Everything it does lives in the library (`payflow_edge`) or in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
