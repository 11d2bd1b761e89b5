//! The byte stream of an exec session after `101 Switching Protocols`
//! (`Upgrade: gleaner-exec.v1`): frames of one kind byte, a 4-byte
//! big-endian length, then the payload. Pure: shared by the agent and the
//! CLI, tested without I/O.

/// The protocol name in the `Upgrade` header.
pub const UPGRADE: &str = "gleaner-exec.v1";
/// Longest payload either side sends or accepts.
pub const MAX_FRAME: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client to agent: bytes for the command's stdin.
    Stdin = 0,
    /// Agent to client: the command's stdout (and its terminal's output).
    Stdout = 1,
    /// Agent to client: the command's stderr (never with a terminal).
    Stderr = 2,
    /// Agent to client, last: the exit code as 4 bytes, big-endian
    /// (128 + n for a signal n, as a shell says it).
    Exit = 3,
    /// Client to agent: no more stdin.
    StdinEof = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdin,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Exit,
            4 => Kind::StdinEof,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("exec stream: unknown frame kind {0}")]
    Kind(u8),
    #[error("exec stream: frame of {0} bytes is over the {MAX_FRAME} limit")]
    TooLong(usize),
}

/// One frame's bytes. Payloads over [`MAX_FRAME`] are the caller's to split
/// (see [`encode_chunks`]).
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `payload` as frames of at most [`MAX_FRAME`] bytes each.
pub fn encode_chunks(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    for chunk in payload.chunks(MAX_FRAME) {
        out.extend(encode(kind, chunk));
    }
    out
}

pub fn exit_frame(code: i32) -> Vec<u8> {
    encode(Kind::Exit, &code.to_be_bytes())
}

pub fn exit_code(frame: &Frame) -> Option<i32> {
    let b: [u8; 4] = frame.payload.as_slice().try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

/// Incremental parser: feed bytes as they arrive, take whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        let kind = Kind::from_byte(kind).ok_or(FrameError::Kind(kind))?;
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some(Frame { kind, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_unknown_kinds_and_huge_lengths() {
        let mut d = Decoder::default();
        d.feed(&[9, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Kind(9)));
        let mut d = Decoder::default();
        d.feed(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn exit_codes_round_trip() {
        let mut d = Decoder::default();
        d.feed(&exit_frame(137));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, exit_code(&f)), (Kind::Exit, Some(137)));
    }

    proptest! {
        /// Whatever the split of the byte stream, the same frames come out.
        #[test]
        fn frames_survive_any_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend(encode(Kind::Stdout, p));
            }
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                d.feed(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.payload);
                }
            }
            prop_assert_eq!(got, payloads);
        }
    }
}
