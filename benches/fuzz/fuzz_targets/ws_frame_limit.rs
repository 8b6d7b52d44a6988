//! Any incoming byte stream, cut into any chunks: the frame guard never panics, passes on
//! a prefix of what it got, and refuses only when a frame header announces more than the
//! limit.
#![no_main]

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::{stream, Stream};
use libfuzzer_sys::fuzz_target;
use switchboard::http::frame_limit::FrameLimit;

fuzz_target!(|data: &[u8]| {
    let [limit, cuts @ ..] = data else {
        return;
    };
    let limit = usize::from(*limit) * 4;
    // The first half of the rest says where to cut the second half.
    let (cuts, bytes) = cuts.split_at(cuts.len() / 2);
    let mut chunks = Vec::new();
    let mut rest = bytes;
    for cut in cuts {
        let at = usize::from(*cut).min(rest.len());
        let (chunk, tail) = rest.split_at(at);
        chunks.push(Ok::<_, PayloadError>(Bytes::copy_from_slice(chunk)));
        rest = tail;
    }
    chunks.push(Ok(Bytes::copy_from_slice(rest)));
    let mut limited = pin!(FrameLimit::new(stream::iter(chunks), limit));
    let mut cx = Context::from_waker(Waker::noop());
    let mut passed = Vec::new();
    loop {
        match limited.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => passed.extend_from_slice(&chunk),
            Poll::Ready(Some(Err(PayloadError::Overflow))) => {
                assert!(matches!(limited.as_mut().poll_next(&mut cx), Poll::Ready(None)));
                break;
            }
            Poll::Ready(Some(Err(other))) => panic!("unexpected error {other}"),
            Poll::Ready(None) => {
                assert_eq!(passed, bytes, "everything passes when nothing is refused");
                break;
            }
            Poll::Pending => panic!("the test stream never waits"),
        }
    }
    assert!(bytes.starts_with(&passed));
});
