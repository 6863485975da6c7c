//! Validating an external key: the backend's key checks, then a wrap/unwrap round trip, then a
//! check that the key binds data keys to their compartment. Failures are classified so an admin
//! knows what to fix.

use super::model::ValidationResult;
use crate::error::{Error, ErrorKind};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::key::DataKey;
use crate::kms::{KmsBackend, RetryPolicy, WrapContext};

/// The compartment id validation wraps under. Key policies that restrict
/// `kms:EncryptionContext:compartment_id` must allow it too.
pub const VALIDATION_COMPARTMENT: &str = "cmek-key-validation";

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
        ErrorKind::Transient => ValidationResult::failure(
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

/// Runs the checks and the round trips; transient errors are retried per `retry`.
pub(crate) async fn validate(
    backend: &dyn KmsBackend,
    key_config: &KeyConfigId,
    retry: &RetryPolicy,
) -> ValidationResult {
    match run(backend, key_config, retry).await {
        Ok(result) => result,
        Err(e) => classify(&e),
    }
}

async fn run(
    backend: &dyn KmsBackend,
    key_config: &KeyConfigId,
    retry: &RetryPolicy,
) -> crate::Result<ValidationResult> {
    retry.run(|| backend.check_key(), |_| {}).await?;
    let compartment = CompartmentId::new(VALIDATION_COMPARTMENT)?;
    let context = WrapContext::new(&compartment, key_config);
    let dek = DataKey::generate()?;
    let wrapped = retry.run(|| backend.wrap(&dek, &context), |_| {}).await?;
    let back = retry
        .run(|| backend.unwrap(&wrapped, &context), |_| {})
        .await?;
    if back.expose_secret() != dek.expose_secret() {
        return Ok(ValidationResult::failure(
            "context_mismatch",
            "the key unwrapped a different data key than it wrapped",
        ));
    }
    let other = CompartmentId::new(format!("{VALIDATION_COMPARTMENT}-other"))?;
    match backend
        .unwrap(&wrapped, &WrapContext::new(&other, key_config))
        .await
    {
        Ok(_) => Ok(ValidationResult::failure(
            "context_mismatch",
            "the key unwrapped a data key under another compartment's context: it does not bind data keys to compartments",
        )),
        Err(e) if e.kind() == ErrorKind::Integrity => Ok(ValidationResult::success()),
        Err(e) => Err(e),
    }
}
