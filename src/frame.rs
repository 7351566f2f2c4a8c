//! The ttrpc wire frame, and nothing else.
//!
//! A frame is a 10-byte big-endian header — body length (u32), stream id (u32),
//! message type (u8), flags (u8) — followed by the body. Bodies larger than
//! [`MAX_BODY`] (4 MiB, as in ttrpc) are never buffered: the reader skips them and
//! reports their header so the caller can answer the stream with an error.
//!
//! A [`Frame`] keeps the exact bytes it was read from, so the relay can forward it
//! unchanged.
// Host data reaches this module: no unwrap/expect/indexing/panic outside tests.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest body accepted, as in ttrpc (4 MiB).
pub const MAX_BODY: usize = 4 << 20;

/// How far ahead of the data received a body buffer is grown.
const READ_CHUNK: usize = 64 << 10;

/// Message type of a request (host → agent).
pub const TYPE_REQUEST: u8 = 1;
/// Message type of a response (agent → host).
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a streaming data frame.
pub const TYPE_DATA: u8 = 3;

/// The sender has closed its half of the stream.
pub const FLAG_REMOTE_CLOSED: u8 = 0x1;
/// The sender opens a stream (streaming RPCs only).
pub const FLAG_REMOTE_OPEN: u8 = 0x2;
/// The frame carries no data (streaming RPCs only).
pub const FLAG_NO_DATA: u8 = 0x4;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
}

impl Header {
    /// Decodes the 10 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            kind: b[8],
            flags: b[9],
        }
    }

    /// Encodes the header into its 10 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.kind;
        b[9] = self.flags;
        b
    }
}

/// One complete frame: its header and the exact bytes (header + body) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    raw: Bytes,
}

impl Frame {
    /// Builds a frame from its parts (length is taken from `body`).
    pub fn new(stream_id: u32, kind: u8, flags: u8, body: &[u8]) -> Frame {
        let header = Header {
            length: body.len() as u32,
            stream_id,
            kind,
            flags,
        };
        let mut raw = BytesMut::with_capacity(HEADER_LEN + body.len());
        raw.put_slice(&header.encode());
        raw.put_slice(body);
        Frame {
            header,
            raw: raw.freeze(),
        }
    }

    /// The body (protobuf-encoded ttrpc Request or Response).
    pub fn body(&self) -> &[u8] {
        self.raw.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The exact wire bytes, header included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// What one read from a stream produced.
#[derive(Debug)]
pub enum Read {
    /// A whole frame.
    Frame(Frame),
    /// A frame whose body exceeded the limit; the body was read and discarded.
    Oversize(Header),
    /// The peer closed the stream cleanly between frames.
    Closed,
}

/// Errors that end a stream: I/O failure or a peer that closed mid-frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until `buf` is full; returns how many bytes were read before EOF.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|rest| !rest.is_empty()) {
        let n = r.read(rest).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Reads one frame, skipping (not buffering) bodies over `max_body` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: usize,
) -> Result<Read, FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    let got = fill(r, &mut hb).await?;
    if got == 0 {
        return Ok(Read::Closed);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            got,
            want: HEADER_LEN,
        });
    }
    let header = Header::parse(&hb);
    let len = header.length as usize;
    if len > max_body {
        let skipped = tokio::io::copy(&mut r.take(len as u64), &mut tokio::io::sink()).await?;
        if skipped < len as u64 {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + skipped as usize,
                want: HEADER_LEN + len,
            });
        }
        return Ok(Read::Oversize(header));
    }
    // The buffer grows with the bytes that actually arrive (at most `READ_CHUNK` ahead),
    // never with the length the header claims: a peer announcing 4 MiB and sending
    // nothing costs nothing.
    let want = HEADER_LEN + len;
    let mut raw = BytesMut::with_capacity(HEADER_LEN + len.min(READ_CHUNK));
    raw.put_slice(&hb);
    let mut body = r.take(len as u64);
    while raw.len() < want {
        raw.reserve((want - raw.len()).min(READ_CHUNK));
        if body.read_buf(&mut raw).await? == 0 {
            return Err(FrameError::Truncated {
                got: raw.len(),
                want,
            });
        }
    }
    Ok(Read::Frame(Frame {
        header,
        raw: raw.freeze(),
    }))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_big_endian() {
        let h = Header {
            length: 0x0102_0304,
            stream_id: 7,
            kind: TYPE_REQUEST,
            flags: FLAG_REMOTE_CLOSED,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 7, 1, 1]);
        assert_eq!(Header::parse(&b), h);
    }

    #[tokio::test]
    async fn reads_frames_back_to_back_and_keeps_raw_bytes() {
        let a = Frame::new(1, TYPE_REQUEST, 0, b"abc");
        let b = Frame::new(3, TYPE_REQUEST, 0, b"");
        let mut wire = a.raw().to_vec();
        wire.extend_from_slice(b.raw());
        let mut r = &wire[..];
        match read_frame(&mut r, MAX_BODY).await.unwrap() {
            Read::Frame(f) => {
                assert_eq!(f, a);
                assert_eq!(f.body(), b"abc");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(read_frame(&mut r, MAX_BODY).await.unwrap(), Read::Frame(f) if f == b));
        assert!(matches!(
            read_frame(&mut r, MAX_BODY).await.unwrap(),
            Read::Closed
        ));
    }

    #[tokio::test]
    async fn oversize_body_is_skipped_and_next_frame_still_reads() {
        let mut wire = Header {
            length: 20,
            stream_id: 5,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode()
        .to_vec();
        wire.extend_from_slice(&[0xAA; 20]);
        wire.extend_from_slice(Frame::new(7, TYPE_REQUEST, 0, b"x").raw());
        let mut r = &wire[..];
        match read_frame(&mut r, 10).await.unwrap() {
            Read::Oversize(h) => assert_eq!((h.stream_id, h.length), (5, 20)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            matches!(read_frame(&mut r, 10).await.unwrap(), Read::Frame(f) if f.header.stream_id == 7)
        );
    }

    #[tokio::test]
    async fn a_body_arriving_in_small_pieces_is_read_exactly() {
        let body: Vec<u8> = (0..(1u32 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let f = Frame::new(9, TYPE_REQUEST, 0, &body);
        let (mut w, mut r) = tokio::io::duplex(1000);
        let wire = f.raw().clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in wire.chunks(997) {
                w.write_all(piece).await.unwrap();
            }
        });
        match read_frame(&mut r, MAX_BODY).await.unwrap() {
            Read::Frame(g) => assert_eq!(g, f),
            other => panic!("unexpected {other:?}"),
        }
        writer.await.unwrap();
        assert!(matches!(
            read_frame(&mut r, MAX_BODY).await.unwrap(),
            Read::Closed
        ));
    }

    #[tokio::test]
    async fn an_announced_body_that_never_comes_is_truncated() {
        let mut wire = Header {
            length: MAX_BODY as u32,
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode()
        .to_vec();
        wire.extend_from_slice(b"12345");
        let mut r = &wire[..];
        assert!(matches!(
            read_frame(&mut r, MAX_BODY).await,
            Err(FrameError::Truncated { got: 15, want }) if want == HEADER_LEN + MAX_BODY
        ));
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors() {
        let mut r: &[u8] = &[0, 0, 0];
        assert!(matches!(
            read_frame(&mut r, MAX_BODY).await,
            Err(FrameError::Truncated { got: 3, want: 10 })
        ));
        let mut wire = Header {
            length: 8,
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode()
        .to_vec();
        wire.extend_from_slice(b"abc");
        let mut r = &wire[..];
        assert!(matches!(
            read_frame(&mut r, MAX_BODY).await,
            Err(FrameError::Truncated { got: 13, want: 18 })
        ));
    }
}
