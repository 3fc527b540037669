//! `payflow-edge listen --forward-to URL`: a gateway for a developer's machine with nothing to
//! configure, like `stripe listen`. It keeps its store and its signing secret in a data
//! directory (the secret is the same after every restart, so it is set once in PayFlow's
//! dashboard and in the app), verifies and de-duplicates what arrives, forwards it re-signed
//! with that same secret as PayFlow signs, and prints each event and its delivery live.
//!
//! It must never listen beyond loopback unless told to (`--listen`): a tunnel is how the
//! internet reaches it (docs/local-testing.md).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use payflow_config::Config;
use payflow_gateway::Gateway;
use rand::distr::{Alphanumeric, SampleString};

use super::client::AdminArgs;
use super::Failure;

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Your app's webhook handler: where verified, de-duplicated events go.
    #[arg(long, value_name = "URL")]
    forward_to: String,
    /// Where PayFlow (through your tunnel) sends.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The path webhooks arrive on.
    #[arg(long, default_value = "/webhooks/payflow")]
    path: String,
    /// Where the store and the signing secret live [default: $XDG_DATA_HOME/payflow-edge, or
    /// ~/.local/share/payflow-edge].
    #[arg(long, env = "PAYFLOW_EDGE_HOME", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// The data directory: the flag, else the XDG data home, else `~/.local/share`.
fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("no $HOME: give --data-dir")?).join(".local/share")
        }
    };
    Ok(base.join("payflow-edge"))
}

/// The signing secret kept in `dir`, made (readable by its owner only) the first time.
fn signing_secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("listen-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_string();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    let secret = format!("whsec_{}", Alphanumeric.sample_string(&mut rand::rng(), 32));
    std::fs::write(&path, format!("{secret}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(secret)
}

pub fn run(args: ListenArgs) -> Result<(), Failure> {
    if !args.forward_to.starts_with("http://") {
        return Err(anyhow::anyhow!(
            "--forward-to {} must be an http:// URL of your app (e.g. http://localhost:3000/webhooks)",
            args.forward_to
        )
        .into());
    }
    let dir = data_dir(args.data_dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secret = signing_secret(&dir)?;
    // The admin API is for this process's own live view: loopback, a fresh token each run.
    let token = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let text = format!(
        r#"
[server]
listen = {listen:?}
[store]
path = {db:?}
wal_prefill_mb = 0  # a few local events: no WAL written ahead (the default 128 MiB) for them
[admin]
listen = "127.0.0.1:0"
token = "{token}"
[[endpoint]]
path = {path:?}
secrets = ["{secret}"]
upstream = "app"
[[upstream]]
name = "app"
url = {forward_to:?}
sign_secret = "{secret}"
retry_base_ms = 500
retry_max_ms = 10000
"#,
        listen = args.listen,
        db = dir.join("listen.db").display().to_string(),
        path = args.path,
        forward_to = args.forward_to,
    );
    let config = Config::parse(&text, |_| None)?;
    let started_ms = super::unix_now_ms();
    super::runtime()?.block_on(async move {
        let gateway = Gateway::start(config).await?;
        let admin = gateway.admin_addr.context("admin listener")?;
        println!("Ready! Forwarding http://{}{} → {}", gateway.ingress_addr, args.path, args.forward_to);
        println!("Your webhook signing secret is {secret}");
        println!(
            "  (kept in {}; the same after a restart: set it in PayFlow's dashboard and in your app)",
            dir.display()
        );
        println!(
            "Expose this port with a tunnel (ngrok http {}, docs/local-testing.md). Ctrl-C stops.",
            gateway.ingress_addr.port()
        );
        let live = AdminArgs { admin: Some(format!("http://{admin}")), token: Some(token), config: None };
        // A thread of its own: the live view makes blocking calls to the admin API.
        // It ends with the process (its errors, at shutdown, say nothing new).
        std::thread::spawn(move || super::events::tail(&live, &[], false, false, started_ms));
        tokio::signal::ctrl_c().await?;
        gateway.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
