//! The two doors of the API and their limits against hostile clients: a
//! TCP listener (bearer token) and a Unix socket (peer credentials).
//!
//! Each connection is served by `gleaner_core::serve` (shared with the
//! scheduler): hyper's HTTP/1 server with a cap on the request head, a
//! deadline for the head (slow or idle clients are dropped), and a cap on
//! open connections per door: past it a new connection is closed at once,
//! so a flood of idle TCP connections never locks the socket's admins out.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use gleaner_core::serve::{accept_failed, serve_conn};
pub use gleaner_core::serve::{shutdown_channel, stop_on, Limits, Shutdown, MAX_HEAD_BYTES};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

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

/// Serves `app` on TCP until `shutdown` turns true.
pub async fn serve_tcp(listener: TcpListener, app: Router, limits: Limits, shutdown: Shutdown) {
    gleaner_core::serve::serve_tcp(listener, app, limits, Door::Tcp, shutdown).await
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
