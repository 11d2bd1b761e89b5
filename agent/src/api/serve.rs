//! The two doors of the API and their limits against hostile clients: a
//! TCP listener (bearer token) and a Unix socket (peer credentials).
//!
//! Each connection is served by hyper's HTTP/1 server with a cap on the
//! request head (`MAX_HEAD_BYTES`, 431 past it), a deadline for the head
//! (slow or idle clients are dropped), and a cap on open connections per
//! door: past it a new connection is closed at once, so a flood of idle
//! TCP connections never locks the socket's admins out.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections on the Unix socket served at once.
pub const SOCKET_MAX_CONNECTIONS: usize = 64;

/// Which door a request came through; put in each request's extensions.
#[derive(Debug, Clone, PartialEq)]
pub enum Door {
    Tcp,
    /// The peer's credentials as the kernel gives them (`SO_PEERCRED`),
    /// plus its supplementary groups.
    Socket {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For the request head here; the body's is `extract::read_timeout`.
    pub read_timeout: Duration,
}

/// Serves `app` on TCP until `shutdown` turns true.
pub async fn serve_tcp(listener: TcpListener, app: Router, limits: Limits, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = shutdown.0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection cap reached: closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            serve_conn(stream, app, Door::Tcp, limits.read_timeout).await;
            drop(slot);
        });
    }
}

/// Connections of non-admin peers on the socket served at once (each only
/// gets its 401): kept apart from the admins' slots, so that a local user
/// holding idle connections never locks the admins out.
pub const SOCKET_MAX_OTHER_CONNECTIONS: usize = 8;

/// Who is an admin on the socket besides uid 0 (config `admin_uids`,
/// `admin_gids`).
#[derive(Debug, Clone, Default)]
pub struct SocketAdmins {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// Serves `app` on the Unix socket until `shutdown` turns true.
pub async fn serve_unix(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    admins: SocketAdmins,
    shutdown: Shutdown,
) {
    let admin_slots = Arc::new(Semaphore::new(SOCKET_MAX_CONNECTIONS));
    let other_slots = Arc::new(Semaphore::new(SOCKET_MAX_OTHER_CONNECTIONS));
    let mut shutdown = shutdown.0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let groups = cred.pid().map(groups_of).unwrap_or_default();
        let mut gids = groups.clone();
        gids.push(cred.gid());
        let slots = if crate::auth::peer_is_admin(cred.uid(), &gids, &admins.uids, &admins.gids) {
            &admin_slots
        } else {
            &other_slots
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let door = Door::Socket {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
        };
        let app = app.clone();
        tokio::spawn(async move {
            serve_conn(stream, app, door, limits.read_timeout).await;
            drop(slot);
        });
    }
}

/// EMFILE and friends: wait a little instead of spinning on accept.
async fn accept_failed(e: &std::io::Error) {
    tracing::warn!("accept: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve_conn<I>(io: I, app: Router, door: Door, read_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(door.clone());
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), svc)
        // `gleaner exec` upgrades its connection.
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection: {e}");
    }
}

/// Supplementary groups of a process (`Groups:` of /proc/<pid>/status).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Binds the Unix socket: a stale socket file is replaced; the socket is
/// root's and 0600, or 0666 when non-root admins are configured (the peer
/// check then tells admins from others).
pub fn bind_unix(path: &Path, open_to_all: bool) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    let mode = if open_to_all { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    nix::unistd::chown(path, Some(0.into()), Some(0.into())).map_err(std::io::Error::from)?;
    Ok(listener)
}

/// Tells the accept loops to stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn shutdown_channel() -> (watch::Sender<bool>, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown(rx))
}

/// Waits for `fut`, then tells the loops to stop.
pub async fn stop_on(fut: impl Future<Output = ()>, tx: watch::Sender<bool>) {
    fut.await;
    let _ = tx.send(true);
}
