//! The frame decoders (`frame::read_frame` and the buffered `frame::FrameReader` the
//! relay uses) on arbitrary bytes.
//!
//! Byte 0 picks the body limit (the real 4 MiB, or a small one so the oversize path
//! is reachable), byte 1 the read size and how often the reader returns `Pending`.
//! Every frame read must be exactly the bytes it was read from; an oversize frame's
//! body must have been consumed completely; the loop must end with `Closed` or an
//! error, never loop or panic. The buffered reader, fed the same bytes in the same
//! pieces, must give exactly the same sequence of results.
#![no_main]

use agent_warden::wire::frame::{self, FrameReader, Header, Read, HEADER_LEN, MAX_BODY};
use fuzz_support::{runtime, Chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, shape, stream @ ..] = data else {
        return;
    };
    let max_body = if limit & 0x80 == 0 {
        MAX_BODY
    } else {
        (limit & 0x7f) as usize
    };
    let chunk = match shape & 0x0f {
        0 => usize::MAX,
        n => n as usize,
    };
    let pending_every = (shape >> 4) as usize;
    runtime().block_on(async {
        let mut r = Chunked::new(stream, chunk, pending_every);
        let mut pos = 0usize;
        let mut results = Vec::new();
        loop {
            let before = r.data.len();
            let res = frame::read_frame(&mut r, max_body).await;
            let used = before - r.data.len();
            let consumed = &stream[pos..pos + used];
            results.push(format!("{res:?}"));
            match res {
                Ok(Read::Frame(f)) => {
                    assert_eq!(f.raw().as_ref(), consumed, "frame is not the bytes it was read from");
                    let mut hb = [0u8; HEADER_LEN];
                    hb.copy_from_slice(&consumed[..HEADER_LEN]);
                    assert_eq!(f.header, Header::parse(&hb));
                    assert_eq!(f.header.encode(), hb);
                    assert_eq!(f.body().len(), f.header.length as usize);
                    assert!(f.body().len() <= max_body);
                }
                Ok(Read::Oversize(h)) => {
                    assert!(h.length as usize > max_body);
                    assert_eq!(used, HEADER_LEN + h.length as usize, "oversize body not skipped exactly");
                }
                Ok(Read::Closed) => {
                    assert_eq!(used, 0);
                    assert!(r.data.is_empty());
                    break;
                }
                Err(_) => {
                    // Truncated (or I/O): only at the end of the input.
                    assert!(r.data.is_empty(), "error before the end of the input");
                    break;
                }
            }
            pos += used;
        }
        let mut b = FrameReader::new(Chunked::new(stream, chunk, pending_every), max_body);
        for want in &results {
            let got = format!("{:?}", b.next().await);
            assert_eq!(&got, want, "FrameReader disagrees with read_frame");
        }
    });
});
