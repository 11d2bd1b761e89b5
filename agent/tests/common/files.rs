//! A small HTTP/1.1 file server of the test's own (no dependency): serves
//! bytes by path, 404 otherwise, and counts GETs per path. Used by the
//! image and fetch tests, and by the scheduler's fleet tests (`#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Serves files by path over HTTP/1.1 and counts GETs per path.
pub struct Server {
    pub port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (f, h) = (files.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (f, h) = (f.clone(), h.clone());
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
                        Some(b) => conn
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
        Server { port, files, hits }
    }

    /// Serves `bytes` at `/name`; returns its URL.
    pub fn serve_bytes(&self, name: &str, bytes: &[u8]) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/{name}"), bytes.to_vec());
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Serves `file` at `/name`; returns its URL.
    pub fn serve(&self, name: &str, file: &Path) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/{name}"), std::fs::read(file).unwrap());
        format!("http://127.0.0.1:{}/{name}", self.port)
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
