//! A small HTTP/1.1 server for the fake KMS services: one task per connection, whole bodies, a
//! way to drop a connection without answering, outages (5xx, hang), a random error rate, and a
//! stop and restart on the same port (to inject network faults).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rand::RngExt;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::Result;

/// A request as a handler sees it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a handler answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Send this response.
    Respond(Box<Response<Full<Bytes>>>),
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    pub(crate) fn new(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Self {
        let mut response = Response::new(Full::new(body.into()));
        *response.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, v);
        }
        Self::Respond(Box::new(response))
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let (Self::Respond(r), Ok(v)) = (&mut self, value.parse()) {
            r.headers_mut().insert(name, v);
        }
        self
    }
}

pub(crate) type BoxReply = Pin<Box<dyn Future<Output = Reply> + Send>>;

type Handler = Arc<dyn Fn(Request) -> BoxReply + Send + Sync>;

/// An outage a fake server can be put into (see the fakes' `set_outage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outage {
    /// Serving normally.
    #[default]
    None,
    /// Every request gets the service's 5xx answer.
    Errors,
    /// Every request hangs until the outage ends (then it is answered).
    Hang,
}

/// What every request meets before its handler: an outage, a random error rate, a count.
#[derive(Default)]
pub(crate) struct ServerFaults {
    outage: Mutex<Outage>,
    /// Probability of a 5xx answer, in parts per million.
    error_ppm: AtomicU64,
    requests: AtomicU64,
}

impl ServerFaults {
    pub(crate) fn set_outage(&self, outage: Outage) {
        *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = outage;
    }

    fn outage(&self) -> Outage {
        *self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `rate` (0 to 1) of requests with a 5xx.
    pub(crate) fn set_error_rate(&self, rate: f64) {
        self.error_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u64, Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Whether this request is failed (5xx), after waiting out a hang.
    async fn fails(&self) -> bool {
        self.requests.fetch_add(1, Relaxed);
        while self.outage() == Outage::Hang {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if self.outage() == Outage::Errors {
            return true;
        }
        let ppm = self.error_ppm.load(Relaxed);
        ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm
    }
}

/// Serves requests with `handler` on 127.0.0.1 until dropped; can be stopped and started again
/// on the same port (clients then see connections refused), and put into an outage.
pub(crate) struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
    faults: Arc<ServerFaults>,
    /// The service's 5xx answer, for outages and random errors.
    server_error: fn() -> Reply,
    accept_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// Serves plain HTTP; `server_error` is the service's own 5xx answer.
    pub(crate) async fn start<H>(handler: H, server_error: fn() -> Reply) -> Result<Self>
    where
        H: Fn(Request) -> BoxReply + Send + Sync + 'static,
    {
        Self::start_with(Arc::new(handler), None, server_error).await
    }

    /// Serves HTTPS with `tls` (see [`super::tls::TestCa`]).
    pub(crate) async fn start_tls<H>(
        handler: H,
        tls: Arc<rustls::ServerConfig>,
        server_error: fn() -> Reply,
    ) -> Result<Self>
    where
        H: Fn(Request) -> BoxReply + Send + Sync + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Self::start_with(Arc::new(handler), Some(acceptor), server_error).await
    }

    async fn start_with(
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
        server_error: fn() -> Reply,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = Self {
            addr: listener.local_addr()?,
            scheme: if tls.is_some() { "https" } else { "http" },
            handler,
            tls,
            faults: Arc::default(),
            server_error,
            accept_loop: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let (handler, tls, faults, server_error) = (
            self.handler.clone(),
            self.tls.clone(),
            self.faults.clone(),
            self.server_error,
        );
        let accept_loop = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, tls, faults) = (handler.clone(), tls.clone(), faults.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (handler, faults) = (handler.clone(), faults.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = match body.collect().await {
                                Ok(collected) => collected.to_bytes(),
                                Err(e) => return Err(std::io::Error::other(e.to_string())),
                            };
                            let reply = if faults.fails().await {
                                server_error()
                            } else {
                                handler(Request {
                                    method: parts.method,
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                })
                                .await
                            };
                            match reply {
                                Reply::Respond(response) => Ok(*response),
                                Reply::Drop => Err(std::io::Error::other(
                                    "connection dropped (injected fault)",
                                )),
                            }
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        if let Some(old) = self
            .accept_loop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(accept_loop)
        {
            old.abort();
        }
    }

    /// Closes the port and every connection: clients get "connection refused".
    pub(crate) fn stop(&self) {
        if let Some(accept_loop) = self.take_accept_loop() {
            accept_loop.abort();
        }
    }

    /// Like [`Server::stop`], returning once the port and the connections are closed (a
    /// request already being served on a kept-alive connection may still be answered).
    pub(crate) async fn stop_and_wait(&self) {
        if let Some(accept_loop) = self.take_accept_loop() {
            accept_loop.abort();
            let _ = accept_loop.await;
            // The connections' tasks were aborted with it; let the runtime drop them.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn take_accept_loop(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.accept_loop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Listens on the same port again after [`Server::stop`].
    pub(crate) async fn restart(&self) -> Result<()> {
        self.stop_and_wait().await;
        // The aborted loop releases the port once the runtime drops it.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// The faults every request meets.
    pub(crate) fn faults(&self) -> &ServerFaults {
        &self.faults
    }

    /// `http://127.0.0.1:<port>` or `https://…`.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs.
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp (`2026-11-23T18:00:00Z`).
pub(crate) fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Locks a fake's state; a test that panicked while holding it leaves the state usable.
pub(crate) fn lock<T>(state: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_forms() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200), "2026-11-23T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let pairs =
            form_pairs(b"Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&S=a+b");
        assert_eq!(pairs[1], ("RoleArn".into(), "arn:aws:iam::1:role/x".into()));
        assert_eq!(pairs[2].1, "a b");
    }
}
