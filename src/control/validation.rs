//! Validating an external key: the backend's key checks, then a wrap/unwrap round trip, then a
//! check that the key binds data keys to their compartment. Failures are classified so an admin
//! knows what to fix.
//!
//! The context values validation uses, for customers who write key policies on them (AWS
//! `kms:EncryptionContext:…` conditions): `compartment_id` is [`VALIDATION_COMPARTMENT`] for the
//! round trip and [`VALIDATION_OTHER_COMPARTMENT`] for the binding check, and `key_config_id` is
//! the external key's id (`ekey_…`). The policy must allow the first; it may refuse the second
//! (a refusal proves the binding as well as an integrity failure does).

use std::time::Duration;

use super::model::ValidationResult;
use crate::error::{Error, ErrorKind};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::{KmsBackend, WrapContext};

/// The compartment id validation's round trip wraps and unwraps under. Key policies that
/// restrict `kms:EncryptionContext:compartment_id` must allow it.
pub const VALIDATION_COMPARTMENT: &str = "cmek-key-validation";

/// The compartment id under which validation checks that the key refuses to unwrap (an
/// integrity failure or a permission refusal both pass). Key policies may deny it.
pub const VALIDATION_OTHER_COMPARTMENT: &str = "cmek-key-validation-other";

/// The validation result for an error.
pub(crate) fn classify(e: &Error) -> ValidationResult {
    let message = e.message().to_owned();
    match e.kind() {
        ErrorKind::PermissionDenied => ValidationResult::failure(
            "permission_denied",
            format!(
                "{message}. Role assignments and key policy changes can take a few minutes to propagate: retry later."
            ),
        ),
        ErrorKind::Unauthenticated => ValidationResult::failure("authentication_failed", message),
        ErrorKind::Transient | ErrorKind::DeadlineExceeded => ValidationResult::failure(
            "network_error",
            format!("the KMS could not be reached: {message}"),
        ),
        ErrorKind::Throttled => ValidationResult::failure("throttled", message),
        ErrorKind::NotFound => ValidationResult::failure("key_not_found", message),
        ErrorKind::KeyRevoked => ValidationResult::failure("key_disabled", message),
        ErrorKind::Validation => ValidationResult::failure("wrong_key_type", message),
        ErrorKind::Integrity => ValidationResult::failure(
            "context_mismatch",
            "the key did not unwrap a data key under the context it was wrapped with".to_owned(),
        ),
        _ => ValidationResult::failure("configuration_error", message),
    }
}

/// Runs the checks and the round trips through `backend`, a one-off stack of the client's
/// layers (retries, no breaker: what validation hears says nothing about keys in use), all
/// within one `deadline`.
pub(crate) async fn validate(
    backend: &dyn KmsBackend,
    key_config: &KeyConfigId,
    deadline: Duration,
) -> ValidationResult {
    let deadline = tokio::time::Instant::now() + deadline;
    match crate::kms::layers::deadline::within(deadline, run(backend, key_config)).await {
        Ok(result) => result,
        Err(e) => classify(&e),
    }
}

async fn run(
    backend: &dyn KmsBackend,
    key_config: &KeyConfigId,
) -> crate::Result<ValidationResult> {
    backend.check_key().await?;
    let compartment = CompartmentId::new(VALIDATION_COMPARTMENT)?;
    let context = WrapContext::new(&compartment, key_config);
    let dek = DataKey::generate()?;
    let wrapped = backend.wrap(&dek, &context).await?;
    let back = backend.unwrap(&wrapped, &context).await?;
    if back.expose_secret() != dek.expose_secret() {
        return Ok(ValidationResult::failure(
            "context_mismatch",
            "the key unwrapped a different data key than it wrapped",
        ));
    }
    let other = CompartmentId::new(VALIDATION_OTHER_COMPARTMENT)?;
    match backend
        .unwrap(&wrapped, &WrapContext::new(&other, key_config))
        .await
    {
        Ok(_) => Ok(ValidationResult::failure(
            "context_mismatch",
            "the key unwrapped a data key under another compartment's context: it does not bind data keys to compartments",
        )),
        // Either the key binds the context, or the key policy keeps other compartments out.
        Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::PermissionDenied) => {
            Ok(ValidationResult::success())
        }
        Err(e) => Err(e),
    }
}
