//! `loadgen`: a fixed-concurrency load generator with pre-signed unique events, and `bare`, the
//! ceiling server (hyper reading the body and answering 200, nothing else).
//!
//! loadgen run --url URL --concurrency 64 --requests 50000 --sign payflow|seed --secret S [--rate R] [--ids random] [--customers N] [--timeline F]
//! loadgen bare --listen 127.0.0.1:7000
//! loadgen forward --listen 127.0.0.1:7001 --upstream http://127.0.0.1:7000/
//! loadgen count --url http://127.0.0.1:7000/ [--at-least N]
//!
//! `forward` is the floor for any queue-mode gateway on one machine: it answers 200 at once and
//! delivers each body to the upstream in the background (up to 32 at a time), with no
//! verification and no storage. Whatever a real gateway costs beyond that is its own work.
//!
//! Each worker owns one keep-alive HTTP/1.1 connection and sends its share of the requests
//! back to back; latencies are measured per request from write to complete reply. With
//! `--rate R` the load is offered at a fixed rate instead (request `i` is due at `i / R`
//! seconds): a worker waits for each request's time, and its latency counts from that time, so
//! a gateway falling behind shows as latency (no coordinated omission), and the line says how
//! late the last request started.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use payflow_verify::{Scheme, SignOptions, Signer};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sign {
    /// payflow v1: X-PayFlow-Signature: t=…,v1=… over "{t}.{body}"
    Payflow,
    /// The seed's own algorithm: hex HMAC over JSON.stringify(JSON.parse(body))
    Seed,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ids {
    /// `evt_bench_<pid>_<n>`, n counting up.
    Sequential,
    /// `evt_<16 hex digits>`, a bijective mix of the pid and n: unique and in no order.
    Random,
}

#[derive(Subcommand)]
enum Command {
    /// Send pre-signed unique events and report throughput and latency percentiles.
    Run {
        /// Where to send. Repeat it to spread the connections over several gateways (replicas
        /// behind no balancer): connection `i` goes to the `i mod n`-th.
        #[arg(long, required = true)]
        url: Vec<String>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 50_000)]
        requests: usize,
        #[arg(long, value_enum, default_value = "payflow")]
        sign: Sign,
        #[arg(long, default_value = "whsec_bench_secret")]
        secret: String,
        /// Label for the report line.
        #[arg(long, default_value = "target")]
        label: String,
        /// Offer the requests at this many per second (all connections together) instead of
        /// as fast as they are answered.
        #[arg(long)]
        rate: Option<f64>,
        /// How the events' ids follow each other: `sequential` (each after the last, so every
        /// index on them is appended to) or `random` (as ids a sender draws at random land all
        /// over such an index).
        #[arg(long, value_enum, default_value = "sequential")]
        ids: Ids,
        /// Spread the payments over this many customers (`customer<n>@example.com`, event `i`
        /// paying customer `i mod N`) instead of the sample's one: a plugin that keeps a kv
        /// key per customer then writes many keys, as for a real merchant.
        #[arg(long)]
        customers: Option<u32>,
        /// Write each request's start (µs after the run began) and latency (µs) to this file,
        /// one `start,latency` line per request in start order: where the slow ones fall in
        /// time tells a stall that holds every connection from a run that is slow throughout.
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
        /// Pad each event's `data` with a string of this many bytes (`data.pad`): a sender
        /// whose events are large, up to the gateway's `max_body_bytes`.
        #[arg(long)]
        pad: Option<usize>,
    },
    /// The ceiling: read the body, answer 200 {"received":true}.
    Bare {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: String,
    },
    /// Print how many POSTs a `bare` server has answered; with `--at-least`, first wait (polling
    /// every few ms on one connection) until it has answered that many. A benchmark waits with
    /// this instead of a script loop: a process started per poll (python3 takes ~0.2 s of CPU
    /// here) would take the CPU the gateway under test is still using to deliver.
    Count {
        /// The `bare` server's base URL.
        #[arg(long)]
        url: String,
        #[arg(long)]
        at_least: Option<u64>,
        /// Give up (and fail) after this long.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// The queue-mode floor: answer 200, then deliver the body to the upstream in the background.
    Forward {
        #[arg(long, default_value = "127.0.0.1:7001")]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match Cli::parse().command {
        Command::Run {
            url,
            concurrency,
            requests,
            sign,
            secret,
            label,
            rate,
            ids,
            customers,
            timeline,
            pad,
        } => {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                bail!("--rate must be a positive number of requests per second");
            }
            if customers == Some(0) {
                bail!("--customers must be at least 1");
            }
            let load = Load { concurrency, requests, rate };
            let events = Events { sign, ids, customers, secret, pad };
            runtime.block_on(run(url, load, events, label, timeline))
        }
        Command::Bare { listen } => runtime.block_on(bare(listen)),
        Command::Count { url, at_least, timeout_secs } => {
            runtime.block_on(count(url, at_least, Duration::from_secs(timeout_secs)))
        }
        Command::Forward { listen, upstream } => runtime.block_on(forward(listen, upstream)),
    }
}

async fn forward(listen: String, upstream: String) -> anyhow::Result<()> {
    let upstream: Uri = upstream.parse()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let listener = TcpListener::bind(&listen).await?;
    println!("forward listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, slots, upstream) = (client.clone(), slots.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (client, slots, upstream) = (client.clone(), slots.clone(), upstream.clone());
                async move {
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    tokio::spawn(async move {
                        let _slot = slots.acquire_owned().await;
                        let request = Request::post(upstream).body(Full::new(body)).expect("request");
                        if let Ok(response) = client.request(request).await {
                            let _ = response.into_body().collect().await;
                        }
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"received\":true}"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// See [`Command::Count`].
async fn count(url: String, at_least: Option<u64>, timeout: Duration) -> anyhow::Result<()> {
    const POLL: Duration = Duration::from_millis(5);
    let uri: Uri = format!("{}/__count", url.trim_end_matches('/')).parse().context("--url")?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let started = Instant::now();
    loop {
        let response = client.get(uri.clone()).await.with_context(|| format!("GET {uri}"))?;
        let body = response.into_body().collect().await?.to_bytes();
        let n: u64 =
            std::str::from_utf8(&body)?.trim().parse().with_context(|| format!("{uri} answered {body:?}"))?;
        if at_least.is_none_or(|want| n >= want) {
            println!("{n}");
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{uri}: {n} after {timeout:?}, waited for {}", at_least.unwrap_or_default());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `bare` also counts the POSTs it answered; `GET /__count` tells, so a benchmark can see when
/// a gateway's queued deliveries have all arrived.
async fn bare(listen: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    let posts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let posts = posts.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let posts = posts.clone();
                async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    if request.method() == hyper::Method::GET && request.uri().path() == "/__count" {
                        return Ok(Response::new(Full::new(Bytes::from(posts.load(Relaxed).to_string()))));
                    }
                    let _ = request.into_body().collect().await;
                    posts.fetch_add(1, Relaxed);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"received\":true}"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One pre-built request: body and headers.
struct Prepared {
    body: Bytes,
    headers: Vec<(String, String)>,
}

/// splitmix64's finaliser: a bijection on u64, so distinct inputs give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the events sent are: how signed, their ids, whom they pay.
struct Events {
    sign: Sign,
    ids: Ids,
    customers: Option<u32>,
    secret: String,
    pad: Option<usize>,
}

fn prepare(count: usize, events: &Events) -> anyhow::Result<Vec<Prepared>> {
    let Events { sign, ids, customers, ref secret, pad } = *events;
    let signer = Signer::new(Scheme::PayFlow, &[secret.as_str()])?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let run = std::process::id();
    (0..count)
        .map(|i| {
            let id = match ids {
                Ids::Sequential => format!("evt_bench_{run}_{i:08}"),
                Ids::Random => format!("evt_{:016x}", mix(((run as u64) << 40) | i as u64)),
            };
            let mut event = payflow_gateway::samples::sample_event("payment.succeeded", &id, now);
            if let Some(n) = customers {
                event["data"]["customer_email"] = format!("customer{}@example.com", i as u32 % n).into();
            }
            if let Some(bytes) = pad {
                event["data"]["pad"] = "x".repeat(bytes).into();
            }
            let body = serde_json::to_vec_pretty(&event)?;
            let headers = match sign {
                Sign::Payflow => signer.sign(&body, &SignOptions::at(now))?,
                Sign::Seed => {
                    let canonical = payflow_verify::js_canonical_json(&body).context("sample is JSON")?;
                    signer.sign(
                        &canonical,
                        &SignOptions {
                            payflow_form: payflow_verify::PayFlowForm::V0,
                            ..SignOptions::at(now)
                        },
                    )?
                }
            };
            Ok(Prepared { body: Bytes::from(body), headers })
        })
        .collect()
}

/// Writes `start,latency` in microseconds, one line per request, sorted by start.
fn write_timeline(path: &std::path::Path, requests: &mut [(Duration, Duration)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    requests.sort_unstable();
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (start, latency) in requests.iter() {
        writeln!(out, "{},{}", start.as_micros(), latency.as_micros())?;
    }
    out.flush()?;
    Ok(())
}

/// How the requests are offered.
#[derive(Clone, Copy)]
struct Load {
    concurrency: usize,
    requests: usize,
    /// Requests per second, when offered at a fixed rate.
    rate: Option<f64>,
}

async fn run(
    urls: Vec<String>,
    load: Load,
    events: Events,
    label: String,
    timeline: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let Load { concurrency, requests, rate } = load;
    let targets = urls
        .iter()
        .map(|url| {
            let uri: Uri = url.parse()?;
            let authority = uri.authority().context("url needs host:port")?.to_string();
            anyhow::Ok((uri, authority))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prepared = Arc::new(prepare(requests, &events)?);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (uri, authority) = targets[w % targets.len()].clone();
        let prepared = prepared.clone();
        workers.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut late = Duration::ZERO;
            for (i, p) in prepared.iter().enumerate().skip(w).step_by(concurrency) {
                let due = rate.map(|r| started + Duration::from_secs_f64(i as f64 / r));
                let mut request = Request::post(uri.clone())
                    .header("host", &authority)
                    .header("content-type", "application/json");
                for (n, v) in &p.headers {
                    request = request.header(n, v);
                }
                let request = request.body(Full::new(p.body.clone()))?;
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                    late = late.max(due.elapsed());
                }
                let t = due.unwrap_or_else(Instant::now);
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                let _ = response.into_body().collect().await?;
                latencies.push((t - started, t.elapsed()));
                if !ok {
                    errors += 1;
                }
            }
            anyhow::Ok((latencies, errors, late))
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    let mut late = Duration::ZERO;
    for w in workers {
        let (l, e, behind) = w.await??;
        latencies.extend(l);
        errors += e;
        late = late.max(behind);
    }
    let elapsed = started.elapsed();
    if latencies.is_empty() {
        bail!("no request completed");
    }
    if let Some(path) = timeline {
        write_timeline(&path, &mut latencies)?;
    }
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, l)| l).collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        latencies.len(),
        errors,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
    if let Some(rate) = rate {
        // Stderr: scripts parse the table line on stdout.
        eprintln!(
            "{label}: offered {rate:.0}/s; the last request started {:.1} ms behind its time",
            ms(late)
        );
    }
    Ok(())
}
