//! `gleaner-agent`: trace init, config, bind, serve until SIGTERM/SIGINT,
//! then stop serving. Tasks keep running: they belong to their supervisors.
//!
//! `gleaner-agent zygote` is the internal mode that forks supervisors,
//! `gleaner-agent nsexec` the one that enters a task for `gleaner exec`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gleaner_agent::config::{AgentConfig, Overrides};
use gleaner_agent::runtime::Agent;

#[derive(Parser, Debug)]
#[command(name = "gleaner-agent", version, about = "gleaner node agent")]
struct Cli {
    /// TOML config file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP listen address, ADDR:PORT.
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name of gleaner's cgroup under each controller's root.
    #[arg(long)]
    cgroup_root: Option<String>,
    #[arg(long)]
    node_id: Option<String>,
    /// etcd endpoints, comma separated.
    #[arg(long)]
    etcd: Option<String>,
    /// Static node attribute K=V (repeatable).
    #[arg(long = "attribute", value_name = "K=V")]
    attributes: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "zygote") {
        return ExitCode::from(gleaner_agent::supervisor::zygote::main() as u8);
    }
    if args.get(1).is_some_and(|a| a == "nsexec") {
        let Some(config) = args.get(2) else {
            return ExitCode::from(127);
        };
        let code = gleaner_agent::exec::helper::main(std::path::Path::new(config));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    let over = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir,
        cgroup_root: cli.cgroup_root,
        node_id: cli.node_id,
        etcd: cli.etcd,
        attributes: cli.attributes,
    };
    let cfg = match AgentConfig::load(cli.config.as_deref(), &over) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gleaner-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gleaner-agent: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gleaner-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLEANER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    use gleaner_agent::api::serve;
    let addr = cfg.listen_addr()?;
    gleaner_core::serve::raise_fd_limit(cfg.max_connections as u64 + 1024);
    let limits = serve::Limits {
        max_connections: cfg.max_connections,
        read_timeout: std::time::Duration::from_secs_f64(cfg.request_read_timeout_s),
    };
    gleaner_agent::api::set_read_timeout(limits.read_timeout);
    let socket_path = cfg.api_socket();
    let open_socket = !(cfg.admin_uids.is_empty() && cfg.admin_gids.is_empty());
    let admins = serve::SocketAdmins {
        uids: cfg.admin_uids.clone(),
        gids: cfg.admin_gids.clone(),
    };
    let agent = Agent::start(cfg).await.context("start")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen {addr}"))?;
    let unix = serve::bind_unix(&socket_path, open_socket)
        .with_context(|| format!("socket {}", socket_path.display()))?;
    tracing::info!(%addr, socket = %socket_path.display(), "api listening");
    notify_systemd("READY=1");
    let app = gleaner_agent::api::router(agent.clone());
    let (tx, stop) = serve::shutdown_channel();
    tokio::join!(
        serve::serve_tcp(listener, app.clone(), limits, stop.clone()),
        serve::serve_unix(unix, app, limits, admins, stop),
        serve::stop_on(shutdown_signal(), tx),
    );
    let _ = std::fs::remove_file(&socket_path);
    notify_systemd("STOPPING=1");
    let running = agent.counts_by_state().get("RUNNING").copied().unwrap_or(0);
    tracing::info!(
        running,
        "agent stopped; tasks keep running under their supervisors"
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
fn notify_systemd(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!("sd_notify {msg}: {e}");
    }
}
