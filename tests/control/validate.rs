//! Validation with a real round trip: each failure cause classified.

use crate::fixture::*;
use std::sync::Arc;

use cmek::control::{CreateExternalKey, ExternalKeyId, Outcome, ProviderConfig, ValidationStatus};
use cmek::testkit::Fault;
use cmek::{ErrorKind, LocalKms};

#[tokio::test]
async fn validate_classifies_each_failure_cause() {
    let f = fixture();
    let (key, kms) = f.key("customer").await;
    let cases: Vec<(Vec<Fault>, bool, &str)> = vec![
        (
            vec![Fault::Fail(ErrorKind::PermissionDenied)],
            false,
            "permission_denied",
        ),
        (
            vec![Fault::Fail(ErrorKind::Unauthenticated)],
            false,
            "authentication_failed",
        ),
        (
            vec![Fault::Fail(ErrorKind::Transient); 8],
            false,
            "network_error",
        ),
        (
            vec![Fault::Fail(ErrorKind::NotFound)],
            false,
            "key_not_found",
        ),
        (vec![], true, "key_disabled"),
        (
            vec![Fault::Fail(ErrorKind::Validation)],
            false,
            "wrong_key_type",
        ),
        // The key checks and the wrap pass, the unwrap under the same context does not.
        (
            vec![Fault::Pass, Fault::Pass, Fault::Fail(ErrorKind::Integrity)],
            false,
            "context_mismatch",
        ),
    ];
    for (faults, disable, cause) in cases {
        kms.clear_faults();
        kms.push_faults(faults);
        if disable {
            kms.disable();
        }
        let result = f
            .plane
            .validate_external_key(&f.admin, &key.id)
            .await
            .unwrap();
        kms.enable();
        assert_eq!(result.status, ValidationStatus::Failure, "{cause}");
        let error = result.error.clone().unwrap();
        assert_eq!(error.kind, cause, "{result:?}");
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["type"], "external_key_validation");
        assert_eq!(json["status"], "failure");
        assert_eq!(json["error"]["type"], cause);
        if cause == "permission_denied" {
            assert!(
                error.message.contains("propagate") && error.message.contains("retry later"),
                "{}",
                error.message
            );
        }
        // A failed validation is recorded and blocks attaching.
        let stored = f.plane.external_key(&key.id).await.unwrap();
        assert!(!stored.is_validated());
        let c = f.compartment(None).await;
        let err = f
            .plane
            .attach_external_key(&f.admin, &c, &key.id)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    }

    // A transient failure is retried and the validation succeeds; a permission failure is not
    // retried (the script would have let a second attempt pass).
    kms.push_faults([
        Fault::Fail(ErrorKind::Transient),
        Fault::Fail(ErrorKind::Throttled),
    ]);
    let retried = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(
        (retried.status, retried.error),
        (ValidationStatus::Success, None)
    );
    kms.push_faults([Fault::Fail(ErrorKind::PermissionDenied)]);
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(result.error.unwrap().kind, "permission_denied");

    let validations: Vec<Outcome> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == "external_key.validate")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(validations.len(), 9);
    assert_eq!(
        validations
            .iter()
            .filter(|o| **o == Outcome::Success)
            .count(),
        1
    );
}

#[tokio::test]
async fn validate_rejects_a_key_that_does_not_bind_compartments() {
    let f = fixture();
    let config = ProviderConfig::Local {
        key_file: "/nonexistent/ignores-context".into(),
    };
    f.keys.register(
        &config,
        Arc::new(IgnoresContext(LocalKms::generate("local:loose").unwrap())),
    );
    let key = f
        .plane
        .create_external_key(&f.admin, CreateExternalKey::new("loose", config))
        .await
        .unwrap();
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    let error = result.error.unwrap();
    assert_eq!(error.kind, "context_mismatch");
    assert!(
        error.message.contains("another compartment"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn validate_reports_a_missing_key_file_as_not_found() {
    let f = fixture();
    let config = ProviderConfig::Local {
        key_file: f.dir.path().join("missing.key").display().to_string(),
    };
    let key = f
        .plane
        .create_external_key(&f.admin, CreateExternalKey::new("gone", config))
        .await
        .unwrap();
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(result.error.unwrap().kind, "key_not_found");
    let unknown = ExternalKeyId::new("ekey_doesnotexist").unwrap();
    let err = f
        .plane
        .validate_external_key(&f.admin, &unknown)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::NotFound, 404)
    );
}
