//! The client's side of an exec session: a hand-written HTTP/1.1 upgrade
//! (the blocking HTTP client has none) over the agent's Unix socket or TCP,
//! then frames both ways. Used by `gleaner exec` and the tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::proto::{self, Decoder, Frame, Kind};
use super::ExecRequest;
use crate::client::ClientError;

pub enum Target {
    Unix(PathBuf),
    /// `http://host:port` and the bearer token.
    Tcp {
        base: String,
        token: Option<String>,
    },
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connected session: read frames with [`ExecConn::next_frame`], send
/// input with [`ExecConn::send_stdin`] / [`ExecConn::close_stdin`].
pub struct ExecConn {
    stream: Stream,
    decoder: Decoder,
    url: String,
}

fn transport(url: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Decode {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// Percent-encodes a path segment.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn connect(target: &Target, id: &str, req: &ExecRequest) -> Result<ExecConn, ClientError> {
    let path = format!("/v1/tasks/{}/exec", segment(id));
    let (mut stream, url, host, token) = match target {
        Target::Unix(sock) => {
            let url = format!("unix:{}{path}", sock.display());
            let s = UnixStream::connect(sock).map_err(|e| transport(&url, e))?;
            (Stream::Unix(s), url, "localhost".to_owned(), None)
        }
        Target::Tcp { base, token } => {
            let url = format!("{base}{path}");
            let Some(hostport) = base.strip_prefix("http://") else {
                return Err(transport(&url, "exec needs an http:// agent address"));
            };
            let s = TcpStream::connect(hostport).map_err(|e| transport(&url, e))?;
            (Stream::Tcp(s), url, hostport.to_owned(), token.clone())
        }
    };
    let body = serde_json::to_vec(req).map_err(|e| transport(&url, e))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        proto::UPGRADE,
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(&body))
        .map_err(|e| transport(&url, e))?;

    // The reply's head, then either the stream or an error body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 << 10 {
            return Err(transport(&url, "reply head over 16 KiB"));
        }
        let n = stream.read(&mut chunk).map_err(|e| transport(&url, e))?;
        if n == 0 {
            return Err(transport(&url, "the agent closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| transport(&url, "no status line"))?;
    let rest = buf[end..].to_vec();
    if status == 101 {
        let mut decoder = Decoder::default();
        decoder.feed(&rest);
        return Ok(ExecConn {
            stream,
            decoder,
            url,
        });
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = rest;
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    Err(ClientError::Api { status, message })
}

impl ExecConn {
    /// The next frame from the agent; `None` once the connection ended.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some(f) = self
                .decoder
                .next_frame()
                .map_err(|e| transport(&self.url, e))?
            {
                return Ok(Some(f));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.decoder.feed(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(transport(&self.url, e)),
            }
        }
    }

    /// A handle that writes the command's stdin, usable from another thread.
    pub fn input(&self) -> Result<ExecInput, ClientError> {
        Ok(ExecInput {
            stream: self
                .stream
                .try_clone()
                .map_err(|e| transport(&self.url, e))?,
        })
    }

    /// Ends the session from this side: the agent kills the command.
    pub fn close(self) {
        self.stream.shutdown();
    }

    /// Copies frames to `out`/`err` until the exit frame; returns the exit
    /// code, or an error if the connection ended first.
    pub fn copy_output(
        &mut self,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32, ClientError> {
        while let Some(f) = self.next_frame()? {
            match f.kind {
                Kind::Stdout => {
                    let _ = out.write_all(&f.payload).and_then(|_| out.flush());
                }
                Kind::Stderr => {
                    let _ = err.write_all(&f.payload).and_then(|_| err.flush());
                }
                Kind::Exit => {
                    return proto::exit_code(&f)
                        .ok_or_else(|| transport(&self.url, "bad exit frame"))
                }
                _ => {}
            }
        }
        Err(transport(
            &self.url,
            "the connection ended before the command did",
        ))
    }
}

pub struct ExecInput {
    stream: Stream,
}

impl ExecInput {
    pub fn send_stdin(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream
            .write_all(&proto::encode_chunks(Kind::Stdin, bytes))
    }
    pub fn close_stdin(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&proto::encode(Kind::StdinEof, &[]))
    }
}
