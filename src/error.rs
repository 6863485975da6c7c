//! The one error type of this crate and its stable [`ErrorKind`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable classification of an [`Error`].
///
/// Match on the kind, never on the message: messages may change between releases, kinds do not.
/// Each kind maps onto one HTTP status (see [`ErrorKind::http_status`]) so a service can answer its
/// callers without string matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something malformed: a bad id, a truncated or unknown envelope, an unknown
    /// format version or cipher suite.
    InvalidInput,
    /// The KMS did not accept our credentials.
    Unauthenticated,
    /// The KMS refused the operation (a key policy, IAM binding or role assignment is missing).
    PermissionDenied,
    /// The key, key version, key configuration or DEK record does not exist.
    NotFound,
    /// The thing being created exists already with other contents.
    AlreadyExists,
    /// A well-formed request that fails a semantic check (for example a key of the wrong type).
    Validation,
    /// The key is disabled, revoked, scheduled for deletion or destroyed: data under it cannot be read
    /// and no new data may be written under it.
    KeyRevoked,
    /// Authentication of ciphertext failed. Deliberately opaque: it never says which check failed.
    Integrity,
    /// The KMS asked us to slow down. Retried with backoff.
    Throttled,
    /// A temporary failure (network, timeout, KMS 5xx). Retried with backoff.
    Transient,
    /// The library or a backend is configured wrongly (for example the compact form without a DEK store).
    Configuration,
    /// The operation's deadline passed (every KMS attempt and backoff counts against it); it
    /// may succeed if tried again later.
    DeadlineExceeded,
}

impl ErrorKind {
    /// A short stable name, e.g. `"key_revoked"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Validation => "validation",
            Self::KeyRevoked => "key_revoked",
            Self::Integrity => "integrity",
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::Configuration => "configuration",
            Self::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// Whether an operation failing with this kind may succeed if tried again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Transient | Self::DeadlineExceeded
        )
    }

    /// The error code of the reference API's error table, to answer with next to
    /// [`ErrorKind::http_status`]: `invalid_request` (400), `auth_error` (401),
    /// `insufficient_scope` (403), `not_found` (404), `already_exists` (409),
    /// `validation_error` (422), `rate_limited` (429) and `server_error` (5xx, retry later).
    pub fn api_error_code(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_request",
            Self::Unauthenticated => "auth_error",
            Self::PermissionDenied => "insufficient_scope",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Validation | Self::KeyRevoked | Self::Integrity => "validation_error",
            Self::Throttled => "rate_limited",
            Self::Configuration | Self::Transient | Self::DeadlineExceeded => "server_error",
        }
    }

    /// The HTTP status an API layer should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidInput => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::Validation | Self::KeyRevoked | Self::Integrity => 422,
            Self::Throttled => 429,
            Self::Configuration => 500,
            Self::Transient => 503,
            Self::DeadlineExceeded => 504,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every integrity failure says.
const OPAQUE: &str = "decryption failed";

/// The error of every fallible operation in this crate.
///
/// It carries a stable [`ErrorKind`], a human-readable message and optionally the underlying cause.
/// No error ever contains key material or plaintext. Integrity failures carry no detail at all.
#[derive(Clone)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// Answered from a key's breaker without asking the KMS (so not worth retrying now).
    fail_fast: bool,
}

impl Error {
    /// Creates an error of `kind` with a message.
    ///
    /// An [`ErrorKind::Integrity`] error always reads "decryption failed", whatever `message`
    /// says (which side, which check, which key or request is nobody's business but the
    /// operator's): the detail goes to `tracing` at debug level only.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        let mut message = message.into();
        if kind == ErrorKind::Integrity && message != OPAQUE {
            tracing::debug!(detail = %message, "integrity failure");
            message = Cow::Borrowed(OPAQUE);
        }
        Self {
            inner: Box::new(Inner {
                kind,
                message,
                source: None,
                fail_fast: false,
            }),
        }
    }

    /// Attaches the underlying cause. It must not contain secrets.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Arc::new(source));
        self
    }

    /// The stable classification.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The human-readable message (without the kind).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether the operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// Prefixes the message with where the error happened (never for integrity failures,
    /// which stay opaque).
    pub(crate) fn with_context(mut self, context: impl fmt::Display) -> Self {
        if self.inner.kind != ErrorKind::Integrity {
            self.inner.message = format!("{context}: {}", self.inner.message).into();
        }
        self
    }

    /// Marks the error as answered without asking the KMS (a key's breaker is open).
    pub(crate) fn failing_fast(mut self) -> Self {
        self.inner.fail_fast = true;
        self
    }

    /// Whether the error was answered from a key's breaker, without asking the KMS: retrying
    /// at once would only get the same answer.
    pub fn is_fail_fast(&self) -> bool {
        self.inner.fail_fast
    }

    /// The opaque authentication failure.
    pub(crate) fn integrity() -> Self {
        Self::new(ErrorKind::Integrity, OPAQUE)
    }

    pub(crate) fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub(crate) fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub(crate) fn configuration(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Configuration, message)
    }

    pub(crate) fn revoked(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::KeyRevoked, message)
    }

    pub(crate) fn transient(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            s.field("source", &format_args!("{source}"));
        }
        s.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::InvalidData | Io::InvalidInput | Io::UnexpectedEof => ErrorKind::InvalidInput,
            Io::Interrupted | Io::TimedOut | Io::WouldBlock => ErrorKind::Transient,
            _ => ErrorKind::Configuration,
        };
        Self::new(kind, format!("i/o error: {e}")).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_kind_and_message() {
        let e = Error::new(ErrorKind::NotFound, "key config ekey_1 not found");
        assert_eq!(e.to_string(), "not_found: key config ekey_1 not found");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        assert!(Error::transient("x").is_retryable());
    }

    #[test]
    fn integrity_is_opaque() {
        assert_eq!(
            Error::integrity().to_string(),
            "integrity: decryption failed"
        );
    }

    #[test]
    fn integrity_errors_drop_their_detail() {
        let e = Error::new(
            ErrorKind::Integrity,
            "AWS KMS Decrypt on arn:aws:kms:us-east-1:1:key/k: InvalidCiphertextException (request id 42)",
        )
        .with_context("unwrapping");
        assert_eq!(e.to_string(), "integrity: decryption failed");
        assert!(!format!("{e:?}").contains("arn:"));
    }

    #[test]
    fn error_stays_small() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
