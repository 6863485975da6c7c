//! AWS SDK errors mapped onto [`ErrorKind`]s.

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use crate::error::{Error, ErrorKind};

/// The kind of an AWS KMS error code (the JSON `__type`).
pub(super) fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "AccessDeniedException" => ErrorKind::PermissionDenied,
        "DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException" => {
            ErrorKind::KeyRevoked
        }
        "NotFoundException" => ErrorKind::NotFound,
        "InvalidCiphertextException" | "IncorrectKeyException" => ErrorKind::Integrity,
        "ThrottlingException" | "LimitExceededException" | "RequestLimitExceeded" => {
            ErrorKind::Throttled
        }
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "ServiceUnavailable"
        | "InternalFailure" => ErrorKind::Transient,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "IncompleteSignature" => ErrorKind::Unauthenticated,
        "InvalidKeyUsageException" | "UnsupportedOperationException" => ErrorKind::Validation,
        _ => ErrorKind::InvalidInput,
    }
}

/// Maps an SDK error of operation `op` on `key` onto a crate error. The message carries the AWS
/// error code, message and request id; never key material (the SDK's errors hold none).
pub(super) fn map<E>(
    op: &str,
    key: &str,
    err: &SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request_id = err.request_id().unwrap_or("-");
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let status = service.raw().status().as_u16();
            let kind = match kind_of_code(code) {
                ErrorKind::InvalidInput if status >= 500 => ErrorKind::Transient,
                // Decrypt is pinned to the configured key, which once wrapped this DEK: a key
                // that is no longer found was deleted, and its data is revoked.
                ErrorKind::NotFound if op == "Decrypt" => ErrorKind::KeyRevoked,
                kind => kind,
            };
            let mut message = format!(
                "AWS KMS {op} on {key}: {code}: {} (HTTP {status}, request id {request_id})",
                e.message().unwrap_or("no message")
            );
            if kind == ErrorKind::PermissionDenied {
                message.push_str(
                    "; check the key policy and the role's permissions (changes can take a few minutes to apply)",
                );
            }
            Error::new(kind, message)
        }
        SdkError::TimeoutError(_) => Error::new(
            ErrorKind::Transient,
            format!("AWS KMS {op} on {key}: timed out"),
        ),
        SdkError::ResponseError(_) => Error::new(
            ErrorKind::Transient,
            format!(
                "AWS KMS {op} on {key}: unreadable response: {}",
                DisplayErrorContext(err)
            ),
        ),
        SdkError::ConstructionFailure(_) => Error::new(
            credential_kind(err).unwrap_or(ErrorKind::Configuration),
            format!("AWS KMS {op} on {key}: {}", DisplayErrorContext(err)),
        ),
        _ => Error::new(
            credential_kind(err).unwrap_or(ErrorKind::Transient),
            format!(
                "AWS KMS {op} on {key}: request failed: {}",
                DisplayErrorContext(err)
            ),
        ),
    }
}

/// What the error chain says when a connection failed or timed out.
const NETWORK_FAILURES: [&str; 5] = [
    "io error",
    "tcp connect error",
    "timed out",
    "connection closed",
    "Connection refused",
];

/// Credential problems (AssumeRole refused, no credentials) surface as dispatch or construction
/// failures. An AssumeRole answer is read by type from the error chain; other providers leave
/// only the chain's text.
fn credential_kind<E: std::error::Error + 'static>(
    err: &SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> Option<ErrorKind> {
    if let Some(kind) = assume_role_kind(err) {
        return Some(kind);
    }
    let text = DisplayErrorContext(err).to_string();
    if text.contains("AccessDenied") {
        Some(ErrorKind::PermissionDenied)
    } else if NETWORK_FAILURES.iter().any(|marker| text.contains(marker)) {
        // Loading credentials failed because STS could not be reached: that is the network,
        // not the credentials.
        Some(ErrorKind::Transient)
    } else if text.contains("ExpiredToken")
        || text.contains("InvalidClientTokenId")
        || text.contains("credentials")
    {
        Some(ErrorKind::Unauthenticated)
    } else {
        None
    }
}

/// The kind of the AssumeRole failure somewhere in `err`'s chain: an STS outage (5xx, no
/// answer) is transient like a KMS outage, not a credentials problem.
fn assume_role_kind(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(sts) = current.downcast_ref::<StsError>() {
            return Some(kind_of_assume_role(sts));
        }
        next = current.source();
    }
    None
}

type StsError = aws_sdk_sts::error::SdkError<AssumeRoleError>;

fn kind_of_assume_role(err: &StsError) -> ErrorKind {
    let SdkError::ServiceError(service) = err else {
        // Timeouts, refused connections and unreadable answers.
        return ErrorKind::Transient;
    };
    let code = service.err().code().unwrap_or("");
    match code {
        "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
        "RegionDisabledException"
        | "MalformedPolicyDocument"
        | "MalformedPolicyDocumentException" => ErrorKind::Configuration,
        _ if code.contains("AccessDenied") => ErrorKind::PermissionDenied,
        _ if service.raw().status().is_server_error() => ErrorKind::Transient,
        _ => match kind_of_code(code) {
            ErrorKind::InvalidInput => ErrorKind::Unauthenticated,
            kind => kind,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::error::ConnectorError;

    /// What `aws-config` wraps an AssumeRole failure in (its `CredentialsError` says the same).
    #[derive(Debug)]
    struct LoadingCredentials(aws_sdk_sts::error::SdkError<AssumeRoleError>);

    impl std::fmt::Display for LoadingCredentials {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an error occurred while loading credentials")
        }
    }

    impl std::error::Error for LoadingCredentials {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A KMS call that failed because AssumeRole got `status` with error `code` from STS.
    fn assume_role_failed(status: u16, code: &str) -> Error {
        let meta = aws_sdk_kms::error::ErrorMetadata::builder()
            .code(code)
            .message("from the test")
            .build();
        let response = aws_sdk_sts::config::http::HttpResponse::new(
            status.try_into().unwrap(),
            "<ErrorResponse/>".into(),
        );
        let sts =
            aws_sdk_sts::error::SdkError::service_error(AssumeRoleError::generic(meta), response);
        let connector = ConnectorError::other(Box::new(LoadingCredentials(sts)), None);
        let kms: SdkError<aws_sdk_kms::operation::encrypt::EncryptError> =
            SdkError::dispatch_failure(connector);
        map("Encrypt", "arn:aws:kms:us-east-1:111122223333:key/k", &kms)
    }

    #[test]
    fn assume_role_failures_keep_what_sts_said() {
        for (status, code, kind) in [
            (500, "InternalFailure", ErrorKind::Transient),
            (503, "ServiceUnavailable", ErrorKind::Transient),
            (500, "", ErrorKind::Transient),
            (400, "Throttling", ErrorKind::Throttled),
            (403, "AccessDenied", ErrorKind::PermissionDenied),
            (403, "ExpiredToken", ErrorKind::Unauthenticated),
            (403, "InvalidClientTokenId", ErrorKind::Unauthenticated),
            (400, "RegionDisabledException", ErrorKind::Configuration),
        ] {
            let err = assume_role_failed(status, code);
            assert_eq!(err.kind(), kind, "HTTP {status} {code}: {err}");
        }
    }

    #[test]
    fn codes_map_onto_kinds() {
        for (code, kind) in [
            ("AccessDeniedException", ErrorKind::PermissionDenied),
            ("DisabledException", ErrorKind::KeyRevoked),
            ("KMSInvalidStateException", ErrorKind::KeyRevoked),
            ("NotFoundException", ErrorKind::NotFound),
            ("InvalidCiphertextException", ErrorKind::Integrity),
            ("IncorrectKeyException", ErrorKind::Integrity),
            ("ThrottlingException", ErrorKind::Throttled),
            ("LimitExceededException", ErrorKind::Throttled),
            ("KMSInternalException", ErrorKind::Transient),
            ("DependencyTimeoutException", ErrorKind::Transient),
            ("UnrecognizedClientException", ErrorKind::Unauthenticated),
            ("InvalidKeyUsageException", ErrorKind::Validation),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
    }
}
