//! Restart, audit events, and keys gone after a rewrap.

use crate::fixture::*;
use std::sync::Arc;

use cmek::control::{
    Actor, AuditEvent, ControlStore, CreateExternalKey, FileControlStore, Outcome, ProviderConfig,
    ValidationStatus,
};
use cmek::{ErrorKind, LocalKms};
use serde_json::Value;

#[tokio::test]
async fn a_restart_keeps_all_state() {
    let state = tempfile::tempdir().unwrap();
    let pm_path = state.path().join("provider-managed.key");
    let admin = Actor::new("admin@example.com");
    let kek = |name: &str| {
        let path = state.path().join(format!("{name}.key"));
        LocalKms::create(&path, format!("local:{name}")).unwrap();
        ProviderConfig::Local {
            key_file: path.display().to_string(),
        }
    };
    let (a, b) = (kek("a"), kek("b"));

    let (keys, compartments, envelopes) = {
        let plane = durable_plane(
            state.path(),
            Arc::new(LocalKms::create(&pm_path, "local:provider").unwrap()),
        );
        let key = plane
            .create_external_key(&admin, CreateExternalKey::new("a", a))
            .await
            .unwrap();
        plane.validate_external_key(&admin, &key.id).await.unwrap();
        let spare = plane
            .create_external_key(&admin, CreateExternalKey::new("spare", b.clone()))
            .await
            .unwrap();
        let unattached = plane
            .create_compartment(&admin, None)
            .await
            .unwrap()
            .compartment_id;
        let attached = plane
            .create_compartment(&admin, None)
            .await
            .unwrap()
            .compartment_id;
        let early = plane
            .client()
            .encrypt_compact(&attached, b"early", b"")
            .await
            .unwrap();
        plane
            .attach_external_key(&admin, &attached, &key.id)
            .await
            .unwrap();
        let late = plane
            .client()
            .encrypt_compact(&attached, b"late", b"")
            .await
            .unwrap();
        plane.rotate_external_key(&admin, &key.id, b).await.unwrap();
        let rotated = plane
            .client()
            .encrypt_compact(&attached, b"rotated", b"")
            .await
            .unwrap();
        plane.rewrap(&admin, &key.id, 10, |_| {}).await.unwrap();
        plane
            .delete_external_key(&admin, &spare.id, false)
            .await
            .unwrap();
        let plain = plane
            .client()
            .encrypt(&unattached, b"provider-managed", b"")
            .await
            .unwrap();
        (
            plane.external_keys().await.unwrap(),
            plane.compartments().await.unwrap(),
            vec![
                (attached.clone(), early, "early"),
                (attached.clone(), late, "late"),
                (attached, rotated, "rotated"),
                (unattached, plain, "provider-managed"),
            ],
        )
    };

    let plane = durable_plane(state.path(), Arc::new(LocalKms::open(&pm_path).unwrap()));
    assert_eq!(plane.external_keys().await.unwrap(), keys);
    assert_eq!(plane.compartments().await.unwrap(), compartments);
    let key = keys.iter().find(|k| !k.is_deleted()).unwrap();
    assert!(key.is_validated() && key.previous_provider_configs.len() == 1);
    for (c, envelope, text) in &envelopes {
        assert_eq!(
            plane.client().decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
    let attached = &envelopes[0].0;
    let other = plane
        .create_external_key(&admin, CreateExternalKey::new("c", kek("c")))
        .await
        .unwrap();
    plane
        .validate_external_key(&admin, &other.id)
        .await
        .unwrap();
    let err = plane
        .attach_external_key(&admin, attached, &other.id)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "write-once survives a restart: {err}"
    );
    assert_eq!(
        plane
            .attach_external_key(&admin, attached, &key.id)
            .await
            .unwrap()
            .external_key_id
            .as_ref(),
        Some(&key.id)
    );
    let job = FileControlStore::open(state.path().join("control"))
        .unwrap()
        .rewrap_job(&key.id)
        .await
        .unwrap()
        .unwrap();
    assert!(job.finished_at.is_some() && job.rewrapped >= 1);

    // The audit trail survived too, one JSON object per line.
    let trail: Vec<AuditEvent> = std::fs::read_to_string(state.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "external_key.create",
            "external_key.validate",
            "external_key.create",
            "compartment.create",
            "compartment.create",
            "compartment.attach",
            "external_key.rotate",
            "rewrap.start",
            "rewrap.complete",
            "external_key.delete",
            "external_key.create",
            "external_key.validate",
            "compartment.attach",
            "compartment.attach",
        ]
    );
    assert!(trail.iter().all(|e| e.actor == admin));
    assert_eq!(trail[5].compartment_id.as_deref(), Some(attached.as_str()));
    assert_eq!(trail[12].outcome, Outcome::Failure);

    // No key material in the trail: none of the key files' secrets appear in it.
    let text = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    for file in ["a.key", "b.key", "c.key", "provider-managed.key"] {
        let secrets = long_strings(
            &serde_json::from_slice(&std::fs::read(state.path().join(file)).unwrap()).unwrap(),
        );
        assert!(!secrets.is_empty());
        for secret in secrets {
            assert!(
                !text.contains(&secret),
                "{file} leaked into the audit trail"
            );
        }
    }
}

/// Every string of 32 or more characters in a JSON value (key material is among them).
fn long_strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) if s.len() >= 32 => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(long_strings).collect(),
        Value::Object(map) => map.values().flat_map(long_strings).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn every_admin_change_is_audited_with_who_what_and_outcome() {
    let f = fixture();
    let (key, _) = f.validated_key("customer").await;
    let c = f.compartment(None).await;
    f.plane
        .attach_external_key(&f.admin, &c, &key.id)
        .await
        .unwrap();
    let events = f.audit.events();
    let summary: Vec<(&str, Option<&str>, Option<&str>, Outcome)> = events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.external_key_id.as_deref(),
                e.compartment_id.as_deref(),
                e.outcome,
            )
        })
        .collect();
    let k = Some(key.id.as_str());
    assert_eq!(
        summary,
        [
            ("external_key.create", None, None, Outcome::Success),
            ("external_key.validate", k, None, Outcome::Success),
            ("compartment.create", None, None, Outcome::Success),
            ("compartment.attach", k, Some(c.as_str()), Outcome::Success),
        ]
    );
    assert!(events.iter().all(|e| e.actor == f.admin));
    assert!(
        events[0]
            .detail
            .as_deref()
            .unwrap()
            .contains(key.id.as_str())
    );
    let json = serde_json::to_value(&events[3]).unwrap();
    for field in [
        "time",
        "actor",
        "action",
        "external_key_id",
        "compartment_id",
        "outcome",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
}

#[tokio::test]
async fn an_earlier_key_gone_after_rewrap_leaves_the_configuration_working() {
    let state = tempfile::tempdir().unwrap();
    let pm_path = state.path().join("provider-managed.key");
    let admin = Actor::new("admin@example.com");
    let kek = |name: &str| {
        let path = state.path().join(format!("{name}.key"));
        LocalKms::create(&path, format!("local:{name}")).unwrap();
        ProviderConfig::Local {
            key_file: path.display().to_string(),
        }
    };
    let (a, b) = (kek("a"), kek("b"));

    let (c, key, compact, self_contained) = {
        let plane = durable_plane(
            state.path(),
            Arc::new(LocalKms::create(&pm_path, "local:provider").unwrap()),
        );
        let key = plane
            .create_external_key(&admin, CreateExternalKey::new("a", a))
            .await
            .unwrap();
        plane.validate_external_key(&admin, &key.id).await.unwrap();
        let c = plane
            .create_compartment(&admin, Some(&key.id))
            .await
            .unwrap()
            .compartment_id;
        let compact = plane
            .client()
            .encrypt_compact(&c, b"compact under a", b"")
            .await
            .unwrap();
        let self_contained = plane
            .client()
            .encrypt(&c, b"self-contained under a", b"")
            .await
            .unwrap();
        plane.rotate_external_key(&admin, &key.id, b).await.unwrap();
        plane.rewrap(&admin, &key.id, 10, |_| {}).await.unwrap();
        (c, key, compact, self_contained)
    };

    // The customer destroys the earlier key once the rewrap is done.
    std::fs::remove_file(state.path().join("a.key")).unwrap();

    let plane = durable_plane(state.path(), Arc::new(LocalKms::open(&pm_path).unwrap()));
    let client = plane.client();
    let fresh = client
        .encrypt_compact(&c, b"under b", b"")
        .await
        .expect("the current key still wraps");
    assert_eq!(client.decrypt(&c, &fresh, b"").await.unwrap(), b"under b");
    assert_eq!(
        client.decrypt(&c, &compact, b"").await.unwrap(),
        b"compact under a",
        "the rewrapped record no longer needs the earlier key"
    );
    let err = client.decrypt(&c, &self_contained, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("local:a") && err.to_string().contains("unavailable"),
        "the error names the missing key: {err}"
    );
    assert_eq!(
        plane
            .validate_external_key(&admin, &key.id)
            .await
            .unwrap()
            .status,
        ValidationStatus::Success
    );
}
