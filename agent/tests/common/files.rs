//! A small HTTP/1.1 file server of the test's own (no dependency): serves
//! bytes by path, 404 otherwise, and counts GETs per path. Used by the
//! image and fetch tests, and by the scheduler's fleet tests (`#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What a path answers.
#[derive(Clone)]
enum Answer {
    Bytes(Vec<u8>),
    /// 302 to this location.
    Redirect(String),
    /// `body` announced, 1 KiB of it sent every `every` (a slow server).
    Trickle {
        body: Vec<u8>,
        every: std::time::Duration,
    },
}

/// Serves files by path over HTTP/1.1 and counts GETs per path.
pub struct Server {
    pub port: u16,
    /// The address it listens on (127.0.0.1 unless [`Server::start_on`]).
    pub ip: String,
    files: Arc<Mutex<HashMap<String, Answer>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// Connections whose answer is being written (trickles included).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_on("127.0.0.1")
    }

    /// A server on another address (another loopback one, say).
    pub fn start_on(ip: &str) -> Server {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let open: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (f, h, o) = (files.clone(), hits.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (f, h, o) = (f.clone(), h.clone(), o.clone());
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let body = f.lock().unwrap().get(&path).cloned();
                    let _ = match body {
                        Some(Answer::Redirect(to)) => conn.write_all(
                            format!(
                                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        ),
                        Some(Answer::Trickle { body, every }) => {
                            use std::sync::atomic::Ordering::SeqCst;
                            o.fetch_add(1, SeqCst);
                            let len = body.len();
                            let mut r = conn.write_all(
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                                    .as_bytes(),
                            );
                            for chunk in body.chunks(1024) {
                                if r.is_err() {
                                    break;
                                }
                                std::thread::sleep(every);
                                r = conn.write_all(chunk);
                            }
                            o.fetch_sub(1, SeqCst);
                            r
                        }
                        Some(Answer::Bytes(b)) => conn
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    b.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| conn.write_all(&b)),
                        None => conn.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                    };
                });
            }
        });
        Server {
            port,
            ip: ip.to_owned(),
            files,
            hits,
            open,
        }
    }

    fn answer(&self, name: &str, a: Answer) -> String {
        self.files.lock().unwrap().insert(format!("/{name}"), a);
        format!("http://{}:{}/{name}", self.ip, self.port)
    }

    /// Serves `bytes` at `/name`; returns its URL.
    pub fn serve_bytes(&self, name: &str, bytes: &[u8]) -> String {
        self.answer(name, Answer::Bytes(bytes.to_vec()))
    }

    /// Serves `file` at `/name`; returns its URL.
    pub fn serve(&self, name: &str, file: &Path) -> String {
        self.answer(name, Answer::Bytes(std::fs::read(file).unwrap()))
    }

    /// `/name` redirects (302) to `to`; returns its URL.
    pub fn redirect(&self, name: &str, to: &str) -> String {
        self.answer(name, Answer::Redirect(to.to_owned()))
    }

    /// `/name` serves `body`, 1 KiB every `every`.
    pub fn trickle(&self, name: &str, body: &[u8], every: std::time::Duration) -> String {
        self.answer(
            name,
            Answer::Trickle {
                body: body.to_vec(),
                every,
            },
        )
    }

    pub fn hits(&self, name: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&format!("/{name}"))
            .copied()
            .unwrap_or(0)
    }
}
