//! Shared by the benches.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// A runtime whose one worker runs background refreshes; the bench thread enters its context.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Drives a future: one poll (the cached hot path is ready at once, so this costs nothing),
/// and the runtime only when it is pending (a cache miss).
#[inline]
pub(crate) fn block<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(fut),
    }
}
