//! `payflow-edge serve`: runs the gateway until SIGTERM or Ctrl-C, then shuts down gracefully.

use std::path::PathBuf;

use clap::Args;
use payflow_config::Config;
use payflow_gateway::Gateway;

use super::Failure;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long, short, default_value = "payflow-edge.toml")]
    config: PathBuf,
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    super::init_tracing();
    let config = Config::load(&args.config)?;
    super::runtime()?.block_on(async {
        let gateway = Gateway::start(config).await?;
        let scheme = if gateway.ingress_tls { "https" } else { "http" };
        // Printed on stdout (logs go to stderr) so scripts can find ports chosen with :0.
        println!("payflow-edge: ingress listening on {scheme}://{}", gateway.ingress_addr);
        if let Some(admin) = gateway.admin_addr {
            println!("payflow-edge: admin listening on http://{admin}");
        }
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests and deliveries");
        gateway.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
