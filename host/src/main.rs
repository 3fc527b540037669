//! The `payflow-edge` binary: parses the command line and maps outcomes to exit codes.
//! Everything it does lives in the library (`payflow_edge`) or in `cli/`.

#![forbid(unsafe_code)]

mod cli;

// Every webhook allocates on a tokio worker and is freed on the store's writer thread; glibc's
// malloc spent ~12% of the gateway's CPU on that traffic under load (perf, bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    cli::run()
}

/// mimalloc asks for transparent huge pages on its arenas, so the first touch of each fresh
/// 2 MiB of heap is zeroed in one page fault, inside whatever allocation touched it. On a
/// tokio worker mid-burst that held every connection's acknowledgement for 15–30 ms at once,
/// several times a second, which alone set the ack p99 (perf: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`, bench/RESULTS.md issue 21). Small pages fault a little at a
/// time; the CPU per event did not change and the heap's resident size fell by a third.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only refused by kernels without the prctl (before 3.15): run as before.
        eprintln!("payflow-edge: could not turn transparent huge pages off ({e}); running with them");
    }
}
