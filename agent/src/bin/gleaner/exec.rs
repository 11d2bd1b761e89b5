//! `gleaner exec ID [--tty] -- CMD...`: a command inside a running task,
//! its output here, our stdin there, its exit code ours.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use gleaner_agent::client::Client;
use gleaner_agent::exec::ExecRequest;

/// The local terminal in raw mode while it lives (with `--tty`).
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios calls on our own stdin with a zeroed struct.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(RawTerminal { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring what tcgetattr returned.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

fn terminal_size() -> (Option<u16>, Option<u16>) {
    // SAFETY: TIOCGWINSZ fills a zeroed winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0
            && ws.ws_row > 0
        {
            return (Some(ws.ws_row), Some(ws.ws_col));
        }
    }
    (None, None)
}

pub fn exec(
    client: &Client,
    id: &str,
    tty: bool,
    env: &[String],
    command: Vec<String>,
) -> Result<ExitCode, String> {
    let mut vars = BTreeMap::new();
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--env {kv:?}: expected K=V"))?;
        vars.insert(k.to_owned(), v.to_owned());
    }
    let (rows, cols) = if tty { terminal_size() } else { (None, None) };
    let req = ExecRequest {
        argv: command,
        tty,
        env: vars,
        rows,
        cols,
    };
    let mut conn = client.exec(id, &req).map_err(|e| e.to_string())?;
    let mut input = conn.input().map_err(|e| e.to_string())?;
    let raw = if tty { RawTerminal::enter() } else { None };
    // Our stdin to the command until EOF; the thread ends with the process.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = input.close_stdin();
                    return;
                }
                Ok(n) => {
                    if input.send_stdin(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let code = conn.copy_output(&mut std::io::stdout(), &mut std::io::stderr());
    drop(raw);
    let code = code.map_err(|e| e.to_string())?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
