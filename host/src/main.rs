//! The `payflow-edge` binary: parses the command line and maps outcomes to exit codes.
//! Everything it does lives in the library (`payflow_edge`) or in `cli/`.

#![forbid(unsafe_code)]

mod cli;

// Every webhook allocates on a tokio worker and is freed on the store's writer thread; glibc's
// malloc spent ~12% of the gateway's CPU on that traffic under load (perf, bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
