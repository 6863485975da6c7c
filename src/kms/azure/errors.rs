//! Azure errors mapped onto [`ErrorKind`]s.

use azure_core::error::ErrorKind as AzureKind;

use crate::error::{Error, ErrorKind};

/// The kind of an HTTP answer of Key Vault. A 403 about the key's own state (disabled, expired,
/// not yet valid) means the key is unusable; other 401/403 are missing permissions.
pub(super) fn kind_of(op: &str, status: u16, message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    match status {
        401 => ErrorKind::PermissionDenied,
        403 if m.contains("disabled") || m.contains("expired") || m.contains("not yet valid") => {
            ErrorKind::KeyRevoked
        }
        403 => ErrorKind::PermissionDenied,
        // The key version that wrapped this DEK is deleted: its data is revoked.
        404 if op == "unwrapKey" => ErrorKind::KeyRevoked,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::Throttled,
        400 if op == "unwrapKey" => ErrorKind::Integrity,
        408 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::InvalidInput,
    }
}

/// Maps a client error of `op` on `key`; never carries key material.
pub(super) fn map(op: &str, key: &str, e: &azure_core::Error) -> Error {
    match e.kind() {
        AzureKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let text = e.to_string();
            let kind = kind_of(op, status, &text);
            let mut message = format!(
                "Azure Key Vault {op} on {key}: HTTP {status} {}: {text}",
                error_code.as_deref().unwrap_or("")
            );
            if kind == ErrorKind::PermissionDenied {
                message.push_str(
                    "; grant the application the Key Vault Crypto Service Encryption User role on the key \
                     (role assignments can take a few minutes to propagate; retry later)",
                );
            }
            Error::new(kind, message)
        }
        AzureKind::Credential => Error::new(
            ErrorKind::Unauthenticated,
            format!("Azure Key Vault {op} on {key}: no token: {e}"),
        ),
        AzureKind::Io | AzureKind::Connection => Error::new(
            ErrorKind::Transient,
            format!("Azure Key Vault {op} on {key}: {e}"),
        ),
        AzureKind::DataConversion => Error::new(
            ErrorKind::Transient,
            format!("Azure Key Vault {op} on {key}: unreadable answer: {e}"),
        ),
        _ => Error::new(
            ErrorKind::Configuration,
            format!("Azure Key Vault {op} on {key}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_onto_kinds() {
        assert_eq!(
            kind_of(
                "unwrapKey",
                403,
                "Operation unwrapKey is not allowed on a disabled key."
            ),
            ErrorKind::KeyRevoked
        );
        assert_eq!(
            kind_of("unwrapKey", 403, "not allowed on an expired key"),
            ErrorKind::KeyRevoked
        );
        assert_eq!(
            kind_of("getKey", 403, "Caller is not authorized"),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind_of("getKey", 401, ""), ErrorKind::PermissionDenied);
        assert_eq!(kind_of("getKey", 404, ""), ErrorKind::NotFound);
        assert_eq!(kind_of("unwrapKey", 404, ""), ErrorKind::KeyRevoked);
        assert_eq!(kind_of("getKey", 429, ""), ErrorKind::Throttled);
        assert_eq!(kind_of("getKey", 503, ""), ErrorKind::Transient);
        assert_eq!(
            kind_of("unwrapKey", 400, "The parameter is incorrect."),
            ErrorKind::Integrity
        );
    }
}
