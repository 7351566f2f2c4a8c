//! The ttrpc wire frame, and nothing else.
//!
//! A frame is a 10-byte big-endian header — body length (u32), stream id (u32),
//! message type (u8), flags (u8) — followed by the body. Bodies larger than
//! [`MAX_BODY`] (4 MiB, as in ttrpc) are never buffered: the reader skips them and
//! reports their header so the caller can answer the stream with an error.
//!
//! A [`Frame`] keeps the exact bytes it was read from, so the relay can forward it
//! unchanged.

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

/// What makes a frame from the host something other than the request of a unary call
/// (AgentService has no streaming methods). [`Header::request_fault`] checks, in this
/// order, the type, the stream id and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestFault {
    /// A data frame: its stream is answered, the connection stays open.
    #[error("data frames are not supported: AgentService has no streaming methods")]
    Data,
    /// A type that is neither request nor data: the connection is closed.
    #[error("unexpected frame type {kind} from the host on stream {stream_id}")]
    Type { kind: u8, stream_id: u32 },
    /// An even stream id (the host's are odd): the connection is closed.
    #[error("stream id {0} is even; host stream ids must be odd")]
    EvenStreamId(u32),
    /// Stream-open or no-data flags on a request: its stream is answered.
    #[error("streaming requests are not supported (frame flags {0:#04x})")]
    StreamingFlags(u8),
}

impl RequestFault {
    /// Whether the fault closes the connection rather than being answered on its stream.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            RequestFault::Type { .. } | RequestFault::EvenStreamId(_)
        )
    }
}

impl Header {
    /// The first thing that keeps this frame, sent by the host, from being the request
    /// of a unary call; `None` for a well-formed request header.
    pub fn request_fault(&self) -> Option<RequestFault> {
        if self.kind != TYPE_REQUEST {
            if self.kind == TYPE_DATA {
                return Some(RequestFault::Data);
            }
            return Some(RequestFault::Type {
                kind: self.kind,
                stream_id: self.stream_id,
            });
        }
        if self.stream_id.is_multiple_of(2) {
            return Some(RequestFault::EvenStreamId(self.stream_id));
        }
        if self.flags & (FLAG_REMOTE_OPEN | FLAG_NO_DATA) != 0 {
            return Some(RequestFault::StreamingFlags(self.flags));
        }
        None
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

/// Bytes asked of the socket at once when no frame is being completed: enough for
/// dozens of small frames per read.
const READ_AHEAD: usize = 16 << 10;

/// A buffered frame reader: one `read` takes in as many frames as the peer has
/// queued, and [`FrameReader::next`] hands them out one by one.
///
/// The buffer never holds more than the frame being completed plus 64 KiB:
/// it grows with the bytes that arrive, not with the length a header announces.
/// Bodies over the limit are skipped as they arrive, never buffered. `next` is
/// cancel-safe (its only await is a `read_buf`), so it can sit in a `select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_body: usize,
    /// An oversize frame being skipped: its header and the body bytes still to drop.
    skipping: Option<(Header, usize)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `inner`, skipping bodies over `max_body` bytes.
    pub fn new(inner: R, max_body: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            max_body,
            skipping: None,
        }
    }

    /// Whether [`next`](Self::next) can answer without reading: a whole frame, or the
    /// end of a skipped one, is buffered.
    pub fn has_frame(&self) -> bool {
        match self.skipping {
            Some((_, left)) => self.buf.len() >= left,
            // An oversize body is skipped as it arrives: it is "here" only when all of it
            // is buffered, like any other frame.
            None => self
                .buffered_header()
                .is_some_and(|h| self.buf.len() >= HEADER_LEN + h.length as usize),
        }
    }

    fn buffered_header(&self) -> Option<Header> {
        let hb: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header::parse(hb))
    }

    /// The next frame, or `Closed` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Read, FrameError> {
        loop {
            if let Some(r) = self.take_buffered() {
                return Ok(r);
            }
            // How many more bytes the frame in progress needs (a header's worth when
            // not even the header is here); ask for up to READ_CHUNK of it, and for
            // READ_AHEAD at least, so that small queued frames come in one read.
            let need = match (self.skipping, self.buffered_header()) {
                (Some((_, left)), _) => left.saturating_sub(self.buf.len()),
                (None, Some(h)) => (HEADER_LEN + h.length as usize).saturating_sub(self.buf.len()),
                (None, None) => HEADER_LEN.saturating_sub(self.buf.len()),
            };
            self.buf.reserve(need.clamp(READ_AHEAD, READ_CHUNK));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() && self.skipping.is_none() {
                    return Ok(Read::Closed);
                }
                return Err(self.eof());
            }
        }
    }

    /// Takes one frame (or the end of a skipped one) out of the buffer.
    fn take_buffered(&mut self) -> Option<Read> {
        loop {
            if let Some((h, left)) = self.skipping {
                let n = left.min(self.buf.len());
                self.buf.advance(n);
                if n < left {
                    self.skipping = Some((h, left - n));
                    return None;
                }
                self.skipping = None;
                return Some(Read::Oversize(h));
            }
            let h = self.buffered_header()?;
            let len = h.length as usize;
            if len > self.max_body {
                self.buf.advance(HEADER_LEN);
                self.skipping = Some((h, len));
                continue;
            }
            if self.buf.len() < HEADER_LEN + len {
                return None;
            }
            let raw = self.buf.split_to(HEADER_LEN + len).freeze();
            return Some(Read::Frame(Frame { header: h, raw }));
        }
    }

    /// What the end of the stream means given what is buffered.
    fn eof(&self) -> FrameError {
        let got = self.buf.len();
        match (self.skipping, self.buffered_header()) {
            (Some((h, left)), _) => FrameError::Truncated {
                got: HEADER_LEN + h.length as usize - left + got,
                want: HEADER_LEN + h.length as usize,
            },
            (None, Some(h)) => FrameError::Truncated {
                got,
                want: HEADER_LEN + h.length as usize,
            },
            (None, None) => FrameError::Truncated {
                got,
                want: HEADER_LEN,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_faults_are_checked_type_then_stream_then_flags() {
        let h = |kind, stream_id, flags| Header {
            length: 0,
            stream_id,
            kind,
            flags,
        };
        assert_eq!(h(TYPE_REQUEST, 1, 0).request_fault(), None);
        assert_eq!(h(TYPE_REQUEST, 1, FLAG_REMOTE_CLOSED).request_fault(), None);
        assert_eq!(
            h(TYPE_DATA, 2, FLAG_REMOTE_OPEN).request_fault(),
            Some(RequestFault::Data)
        );
        let f = h(TYPE_RESPONSE, 4, 0).request_fault().unwrap();
        assert_eq!(
            f,
            RequestFault::Type {
                kind: TYPE_RESPONSE,
                stream_id: 4
            }
        );
        assert!(f.closes_connection());
        let f = h(TYPE_REQUEST, 4, FLAG_NO_DATA).request_fault().unwrap();
        assert_eq!(f, RequestFault::EvenStreamId(4));
        assert!(f.closes_connection());
        let f = h(TYPE_REQUEST, 5, FLAG_NO_DATA).request_fault().unwrap();
        assert_eq!(f, RequestFault::StreamingFlags(FLAG_NO_DATA));
        assert!(!f.closes_connection());
        assert_eq!(
            f.to_string(),
            "streaming requests are not supported (frame flags 0x04)"
        );
    }

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

    /// Splits `wire` into pieces of the given sizes (cycled) on a duplex pipe.
    fn pieces(wire: Vec<u8>, sizes: Vec<usize>) -> tokio::io::DuplexStream {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut at = 0;
            for &n in sizes.iter().cycle() {
                if at >= wire.len() {
                    break;
                }
                let end = (at + n).min(wire.len());
                w.write_all(&wire[at..end]).await.unwrap();
                at = end;
                tokio::task::yield_now().await;
            }
        });
        r
    }

    /// Everything `read_frame` makes of `wire`, ending with the first non-frame.
    async fn all_read_frame(wire: &[u8], max: usize) -> Vec<String> {
        let mut r = wire;
        let mut out = Vec::new();
        loop {
            let x = read_frame(&mut r, max).await;
            let end = !matches!(x, Ok(Read::Frame(_)) | Ok(Read::Oversize(_)));
            out.push(format!("{x:?}"));
            if end {
                return out;
            }
        }
    }

    async fn all_frame_reader<R: AsyncRead + Unpin>(r: R, max: usize) -> Vec<String> {
        let mut r = FrameReader::new(r, max);
        let mut out = Vec::new();
        loop {
            let x = r.next().await;
            let end = !matches!(x, Ok(Read::Frame(_)) | Ok(Read::Oversize(_)));
            out.push(format!("{x:?}"));
            if end {
                return out;
            }
        }
    }

    /// A stream mixing small, empty, oversize and large frames.
    fn mixed_wire() -> Vec<u8> {
        let mut wire = Vec::new();
        for i in 0..40u32 {
            let body: Vec<u8> = match i % 5 {
                0 => vec![],
                1 => vec![i as u8; 3],
                2 => vec![0xAB; 300], // oversize for max = 200
                3 => vec![7; 150],
                _ => (0..190).map(|x| x as u8).collect(),
            };
            wire.extend_from_slice(Frame::new(2 * i + 1, TYPE_REQUEST, 0, &body).raw());
        }
        wire
    }

    #[tokio::test]
    async fn frame_reader_agrees_with_read_frame_however_the_bytes_arrive() {
        let wire = mixed_wire();
        let want = all_read_frame(&wire, 200).await;
        assert_eq!(want.len(), 41, "40 frames then Closed: {want:?}");
        assert!(want.iter().filter(|x| x.contains("Oversize")).count() == 8);
        for sizes in [&[1usize][..], &[7], &[10], &[11, 3], &[4096], &[299, 1, 17]] {
            let got = all_frame_reader(pieces(wire.clone(), sizes.to_vec()), 200).await;
            assert_eq!(got, want, "pieces of {sizes:?}");
        }
        // Every truncation point gives the same error (or Closed) as read_frame.
        for cut in (0..wire.len())
            .step_by(37)
            .chain([1, 9, 10, 11, wire.len() - 1])
        {
            let part = &wire[..cut];
            assert_eq!(
                all_frame_reader(part, 200).await,
                all_read_frame(part, 200).await,
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn frame_reader_has_frame_only_when_next_needs_no_read() {
        use tokio::io::AsyncWriteExt;
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(r, 200);
        assert!(!r.has_frame());
        // A small frame, then an oversize one with half of its body sent: after the
        // small one, the oversize one is not "here" (skipping it must read).
        let big = Frame::new(1, TYPE_REQUEST, 0, &[9; 300]);
        w.write_all(Frame::new(5, TYPE_REQUEST, 0, b"y").raw())
            .await
            .unwrap();
        w.write_all(&big.raw()[..160]).await.unwrap();
        assert!(matches!(r.next().await.unwrap(), Read::Frame(f) if f.header.stream_id == 5));
        assert!(!r.has_frame());
        let wait = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, r.next()).await.is_err());
        assert!(!r.has_frame());
        // The rest of it and a small frame: both answer without reading.
        w.write_all(&big.raw()[160..]).await.unwrap();
        w.write_all(Frame::new(3, TYPE_REQUEST, 0, b"x").raw())
            .await
            .unwrap();
        assert!(matches!(r.next().await.unwrap(), Read::Oversize(h) if h.stream_id == 1));
        assert!(r.has_frame());
        assert!(matches!(r.next().await.unwrap(), Read::Frame(f) if f.header.stream_id == 3));
        assert!(!r.has_frame());
    }

    #[tokio::test]
    async fn frame_reader_takes_queued_frames_in_one_read() {
        struct Counting<'a>(&'a [u8], usize);
        impl AsyncRead for Counting<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.1 += 1;
                let n = buf.remaining().min(self.0.len());
                buf.put_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut wire = Vec::new();
        for i in 0..64u32 {
            wire.extend_from_slice(Frame::new(2 * i + 1, TYPE_REQUEST, 0, &[1; 80]).raw());
        }
        let mut r = FrameReader::new(Counting(&wire, 0), MAX_BODY);
        for i in 0..64u32 {
            assert!(
                matches!(r.next().await.unwrap(), Read::Frame(f) if f.header.stream_id == 2 * i + 1)
            );
        }
        assert_eq!(r.inner.1, 1, "64 frames of 90 bytes in one read");
        assert!(!r.has_frame());
        assert!(matches!(r.next().await.unwrap(), Read::Closed));
    }

    #[tokio::test]
    async fn frame_reader_buffer_grows_with_bytes_received_not_announced() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut wire = Frame::new(1, TYPE_REQUEST, 0, &[5; 100]).raw().to_vec();
        wire.splice(0..4, (MAX_BODY as u32).to_be_bytes());
        use tokio::io::AsyncWriteExt;
        w.write_all(&wire).await.unwrap();
        let mut r = FrameReader::new(r, MAX_BODY);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(pending.is_err(), "the body has not arrived");
        assert!(!r.has_frame());
        assert!(
            r.buf.capacity() <= HEADER_LEN + 100 + READ_CHUNK,
            "capacity {} for 110 bytes received",
            r.buf.capacity()
        );
    }

    #[tokio::test]
    async fn frame_reader_next_is_cancel_safe() {
        // Cancel `next` over and over while a frame trickles in: nothing is lost.
        let wire = mixed_wire();
        let want = all_read_frame(&wire, 200).await;
        let mut r = FrameReader::new(pieces(wire, vec![3]), 200);
        let mut got = Vec::new();
        loop {
            let x = tokio::select! {
                biased;
                x = r.next() => x,
                _ = tokio::task::yield_now() => continue,
            };
            let end = !matches!(x, Ok(Read::Frame(_)) | Ok(Read::Oversize(_)));
            got.push(format!("{x:?}"));
            if end {
                break;
            }
        }
        assert_eq!(got, want);
    }
}
