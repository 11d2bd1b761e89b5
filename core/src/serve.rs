//! Serving HTTP/1 to hostile clients (feature `serve`): the agent's and the
//! scheduler's listeners share it. Each connection is served by hyper with
//! a cap on the request head (`MAX_HEAD_BYTES`, 431 past it) and a deadline
//! for the head (slow or idle clients are dropped: slowloris), and a cap on
//! open connections per listener (past it a new connection is closed at
//! once). A request body gets its own deadline through [`read_body`].
//!
//! Kept behind a feature: the rest of this crate stays free of an async
//! runtime and HTTP.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For the request head (here) and the body ([`read_body`]).
    pub read_timeout: Duration,
}

/// Tells the accept loops to stop when the channel turns true.
#[derive(Clone)]
pub struct Shutdown(pub watch::Receiver<bool>);

pub fn shutdown_channel() -> (watch::Sender<bool>, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown(rx))
}

/// Waits for `fut`, then tells the loops to stop.
pub async fn stop_on(fut: impl Future<Output = ()>, tx: watch::Sender<bool>) {
    fut.await;
    let _ = tx.send(true);
}

/// Serves `app` on TCP until `shutdown` turns true. `ext` goes into every
/// request's extensions (the agent's door).
pub async fn serve_tcp<E>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    ext: E,
    shutdown: Shutdown,
) where
    E: Clone + Send + Sync + 'static,
{
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
        keepalive(&stream);
        let app = app.clone();
        let ext = ext.clone();
        tokio::spawn(async move {
            serve_conn(stream, app, ext, limits.read_timeout).await;
            drop(slot);
        });
    }
}

/// A client that vanished without a FIN (host gone, cable pulled) is found
/// out, and its connection (an idle `gleaner exec`, say) ends: probes after
/// 30 s idle, 3 of them 10 s apart. No TCP_USER_TIMEOUT: it would also end
/// a live client that stopped reading for a while (a pager on exec output).
fn keepalive(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on an open socket with a c_int we own.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("setsockopt {name}: {}", std::io::Error::last_os_error());
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

/// EMFILE and friends: wait a little instead of spinning on accept.
pub async fn accept_failed(e: &std::io::Error) {
    tracing::warn!("accept: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One connection: HTTP/1 with the head limits, upgrades allowed.
pub async fn serve_conn<I, E>(io: I, app: Router, ext: E, read_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Clone + Send + Sync + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ext.clone());
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

/// Every connection is a descriptor: the soft limit (often 1024) is raised
/// towards the hard one so the connection cap, not EMFILE, is what binds.
pub fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = want.min(hard).max(soft);
        if target > soft {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body: {0}")]
    Broken(String),
}

/// A whole request body, at most `max` bytes, within `timeout`: a client
/// that sends its head and then trickles (or withholds) the body holds its
/// connection no longer than that.
pub async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // axum's error shows its cause: http-body-util's limit error.
            let text = format!("{e}");
            if text.contains("length limit exceeded") {
                Err(BodyError::TooLarge(max))
            } else {
                Err(BodyError::Broken(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_whole_within_its_limits() {
        let b = read_body(Body::from("hello"), 10, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(
            read_body(Body::from("x".repeat(11)), 10, Duration::from_secs(1)).await,
            Err(BodyError::TooLarge(10))
        );
        // A body that never ends: the deadline.
        let slow =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        assert_eq!(
            read_body(slow, 10, Duration::from_millis(50)).await,
            Err(BodyError::Timeout(Duration::from_millis(50)))
        );
    }
}
