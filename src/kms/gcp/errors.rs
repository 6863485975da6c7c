//! Google Cloud errors mapped onto [`ErrorKind`]s.

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;

use crate::error::{Error, ErrorKind};

/// The kind of a status code; `INVALID_ARGUMENT` on `Decrypt` is a failed authentication (wrong
/// AAD or a tampered ciphertext).
pub(super) fn kind_of(op: &str, code: Code) -> ErrorKind {
    match code {
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        // The key (ring, project) that wrapped this DEK is gone: its data is revoked.
        Code::NotFound if op == "Decrypt" => ErrorKind::KeyRevoked,
        Code::NotFound => ErrorKind::NotFound,
        Code::FailedPrecondition => ErrorKind::KeyRevoked,
        Code::InvalidArgument if op == "Decrypt" => ErrorKind::Integrity,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidInput,
        Code::ResourceExhausted => ErrorKind::Throttled,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Aborted
        | Code::Unknown => ErrorKind::Transient,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        _ => ErrorKind::InvalidInput,
    }
}

/// Whether the service refused a request whose checksum did not match (corrupted on the way in).
pub(super) fn is_request_checksum_error(e: &GaxError) -> bool {
    e.status().is_some_and(|s| {
        s.code == Code::InvalidArgument && s.message.to_ascii_lowercase().contains("checksum")
    })
}

/// Maps a client error of `op` on `key`. Messages carry the status and its message, never key
/// material.
pub(super) fn map(op: &str, key: &str, e: &GaxError) -> Error {
    if let Some(status) = e.status() {
        let kind = kind_of(op, status.code);
        let mut message = format!(
            "Cloud KMS {op} on {key}: {} {}: {}",
            e.http_status_code()
                .map_or_else(String::new, |c| format!("HTTP {c}")),
            status.code.name(),
            status.message
        );
        if kind == ErrorKind::PermissionDenied {
            message.push_str(
                "; grant the service account roles/cloudkms.cryptoKeyEncrypterDecrypter on the key (IAM changes can take a few minutes)",
            );
        }
        return Error::new(kind, message);
    }
    let kind = if e.is_authentication() {
        ErrorKind::Unauthenticated
    } else if e.is_timeout()
        || e.is_io()
        || e.is_connect()
        || e.is_transport()
        || e.is_exhausted()
        || e.is_deserialization()
    {
        ErrorKind::Transient
    } else {
        ErrorKind::Configuration
    };
    Error::new(kind, format!("Cloud KMS {op} on {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_onto_kinds() {
        assert_eq!(
            kind_of("Decrypt", Code::InvalidArgument),
            ErrorKind::Integrity
        );
        assert_eq!(
            kind_of("Encrypt", Code::InvalidArgument),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind_of("Encrypt", Code::FailedPrecondition),
            ErrorKind::KeyRevoked
        );
        assert_eq!(
            kind_of("Encrypt", Code::PermissionDenied),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind_of("Encrypt", Code::NotFound), ErrorKind::NotFound);
        assert_eq!(kind_of("Decrypt", Code::NotFound), ErrorKind::KeyRevoked);
        assert_eq!(
            kind_of("Encrypt", Code::ResourceExhausted),
            ErrorKind::Throttled
        );
        assert_eq!(kind_of("Encrypt", Code::Unavailable), ErrorKind::Transient);
        assert_eq!(
            kind_of("Encrypt", Code::DeadlineExceeded),
            ErrorKind::Transient
        );
        assert_eq!(
            kind_of("Encrypt", Code::Unauthenticated),
            ErrorKind::Unauthenticated
        );
    }
}
