//! `plugin-overhead FILE [RUNS] [both|fresh|warm] [BLOCK]`: the per-event cost of a plugin in the gateway's sandbox, for
//! a fresh instance per event (the default) and for a warm instance reused across events, side
//! by side in one run. Prints p50/p90/p99 of each run (instantiate + call + collecting the
//! outcome and logs), as the gateway would pay it. `fresh` or `warm` runs only that kind (for a
//! profiler).
//!
//! The two kinds alternate in blocks of BLOCK runs (default 500), so drift on a shared machine
//! hits both alike. A block of 1 alternates every run; that measures a warm run just after a
//! fresh instantiation has swept the caches, which is not what reuse looks like (a reused
//! instance runs event after event) and measured about twice as slow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use payflow_plugins::{Event, Limits, MemoryKv, Run, Runtime};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = args.next().context("usage: plugin-overhead FILE.wasm [RUNS]")?;
    let runs: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    let kinds = args.next().unwrap_or_else(|| "both".into());
    let (fresh, warm_too) = match kinds.as_str() {
        "both" => (true, true),
        "fresh" => (true, false),
        "warm" => (false, true),
        other => anyhow::bail!("expected both, fresh or warm, not {other:?}"),
    };
    let block: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(500).max(1);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
    let runtime = Runtime::new(1)?;
    let plugin = runtime.load(&bytes)?;
    let body = serde_json::to_vec(&payflow_gateway::samples::sample_event(
        "payment.succeeded",
        "evt_bench",
        1_700_000_000,
    ))?;
    let event = Event {
        id: "evt_bench".into(),
        event_type: "payment.succeeded".into(),
        endpoint: "/webhooks/payflow".into(),
        merchant: "default".into(),
        body,
        received_at_ms: 1_700_000_000_000,
    };
    let config = HashMap::from([("min_amount".to_string(), "100".to_string())]);
    let kv = Arc::new(MemoryKv::default());
    let limits = Limits::default();

    let mut warm = plugin.warm(&config, kv.clone(), &limits);
    let (mut fresh_times, mut warm_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    // Interleaved in blocks, so drift on a shared machine hits both alike.
    let time = |n: usize, times: &mut Vec<Duration>, kind: &str, run: &mut dyn FnMut() -> Run| {
        for _ in 0..n {
            let run = run();
            run.result.map_err(|e| anyhow::anyhow!("{kind} run failed: {e}"))?;
            times.push(run.duration);
        }
        anyhow::Ok(())
    };
    let mut done = 0;
    while done < runs {
        let n = block.min(runs - done);
        if fresh {
            time(n, &mut fresh_times, "fresh", &mut || plugin.run(&event, &config, kv.clone(), &limits))?;
        }
        if warm_too {
            time(n, &mut warm_times, "warm", &mut || warm.run(&event))?;
        }
        done += n;
    }
    println!("| plugin | instance | runs | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (label, mut times) in [("fresh per event", fresh_times), ("warm, reused", warm_times)] {
        if times.is_empty() {
            continue;
        }
        times.sort_unstable();
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {} | {label} | {runs} | {:.1} | {:.1} | {:.1} |",
            std::path::Path::new(&file).file_name().unwrap_or_default().to_string_lossy(),
            us(pct(0.5)),
            us(pct(0.9)),
            us(pct(0.99))
        );
    }
    Ok(())
}
