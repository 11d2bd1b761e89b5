//! `gleaner-scheduler`: thin binary over the library: flags and config,
//! the API listener, the election loop, graceful SIGTERM (the leader
//! resigns at once).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gleaner_core::fleet::Keys;
use gleaner_scheduler::api::{self, AppState};
use gleaner_scheduler::config::SchedulerConfig;
use gleaner_scheduler::leader;
use gleaner_scheduler::marathon::cache::Cache;
use gleaner_scheduler::marathon::controller::Credentials;
use gleaner_scheduler::metrics::Metrics;
use gleaner_scheduler::store::{self, Store};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "gleaner-scheduler", version, about = "gleaner fleet scheduler")]
struct Args {
    /// etcd client URLs, comma-separated [default: from --config, else http://127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix of the fleet [default: /gleaner].
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// API address [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// File holding the API's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Config file (TOML; see packaging/etc/scheduler.toml.in).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gleaner-scheduler: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn config(args: &Args) -> anyhow::Result<SchedulerConfig> {
    let mut c = match &args.config {
        Some(p) => SchedulerConfig::load(p)?,
        None => SchedulerConfig::default(),
    };
    if !args.etcd.is_empty() {
        c.etcd = args.etcd.clone();
    }
    if let Some(p) = &args.etcd_prefix {
        c.etcd_prefix = p.clone();
    }
    if let Some(l) = &args.listen {
        c.listen = l.clone();
    }
    if let Some(t) = &args.token_file {
        c.token_file = Some(t.clone());
    }
    c.validate().map_err(|e| anyhow::anyhow!("config: {e}"))?;
    // Read once at start: a bad or readable password file stops here.
    c.etcd_credentials = c.read_etcd_credentials()?;
    if c.name.is_empty() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "scheduler".into());
        let port = c.listen.rsplit(':').next().unwrap_or("");
        c.name = format!("{host}:{port}");
    }
    Ok(c)
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Arc::new(config(&args)?);
    let token = config.token()?;
    if token.is_none() {
        tracing::warn!("no token_file: the API is open to every local process, tasks included");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, token))
}

async fn serve(config: Arc<SchedulerConfig>, token: Option<String>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let app_key = token.as_deref().map(gleaner_core::app_token::derive_key);
    let keys = Keys::new(&config.etcd_prefix);
    let cache = Arc::new(Cache::default());
    let state = AppState {
        store: Arc::new(Store::new(&config.etcd, config.etcd_credentials.clone())),
        keys: Arc::new(keys.clone()),
        app_key,
        token: token.map(Into::into),
        metrics: metrics.clone(),
        name: config.name.clone().into(),
        default_max_retries: config.default_max_retries,
        marathon: cache.clone(),
        read_timeout: config.http_limits().read_timeout,
        event_streams: Arc::new(tokio::sync::Semaphore::new(config.max_event_streams)),
        max_event_streams: config.max_event_streams,
    };
    gleaner_core::serve::raise_fd_limit(config.max_connections as u64 + 1024);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen {}", config.listen))?;
    tracing::info!(listen = %config.listen, name = %config.name, "gleaner-scheduler serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(leader::run(
        config.clone(),
        config.name.clone(),
        metrics,
        Arc::new(Credentials {
            key: app_key,
            url: config.advertised_url(),
        }),
        stop_rx.clone(),
    ));
    tokio::spawn(cache.run(
        config.etcd.iter().map(|e| store::endpoint(e)).collect(),
        config.etcd_credentials.clone(),
        keys,
        stop_rx.clone(),
    ));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signalled = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
    };
    // The agent's listener (core's `serve`): head and body deadlines and a
    // connection cap against idle or trickling clients.
    tokio::join!(
        gleaner_core::serve::serve_tcp(
            listener,
            api::router(state),
            config.http_limits(),
            (),
            gleaner_core::serve::Shutdown(stop_rx.clone()),
        ),
        gleaner_core::serve::stop_on(signalled, stop_tx),
    );
    // The leader resigns before the process ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), elector).await;
    Ok(())
}
