//! The local key file backend: wrapping, versions, the file on disk.

use super::*;
use crate::ids::{CompartmentId, KeyConfigId};

fn ctx_ids() -> (CompartmentId, KeyConfigId) {
    (
        CompartmentId::new("c1").unwrap(),
        KeyConfigId::new("local").unwrap(),
    )
}

#[tokio::test]
async fn file_round_trip_keeps_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    let kms = LocalKms::create(&path, "local:test").unwrap();
    let (c, k) = ctx_ids();
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().unwrap();
    let w1 = kms.wrap(&dek, &ctx).await.unwrap();
    assert_eq!(kms.rotate().unwrap(), 2);
    let w2 = kms.wrap(&dek, &ctx).await.unwrap();
    assert_eq!(
        (w1.key_version.as_str(), w2.key_version.as_str()),
        ("1", "2")
    );

    let reopened = LocalKms::open(&path).unwrap();
    assert_eq!(reopened.primary_version(), 2);
    for w in [&w1, &w2] {
        let back = reopened.unwrap(w, &ctx).await.unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        LocalKms::create(&path, "again").unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
}

#[tokio::test]
async fn disabled_and_destroyed_versions_are_revoked() {
    let kms = LocalKms::generate("local:test").unwrap();
    let (c, k) = ctx_ids();
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().unwrap();
    let w1 = kms.wrap(&dek, &ctx).await.unwrap();
    kms.rotate().unwrap();
    kms.set_version_state(1, VersionState::Disabled).unwrap();
    assert_eq!(
        kms.unwrap(&w1, &ctx).await.err().unwrap().kind(),
        ErrorKind::KeyRevoked
    );
    kms.set_version_state(1, VersionState::Enabled).unwrap();
    assert!(kms.unwrap(&w1, &ctx).await.is_ok());
    kms.set_version_state(1, VersionState::Destroyed).unwrap();
    assert_eq!(
        kms.unwrap(&w1, &ctx).await.err().unwrap().kind(),
        ErrorKind::KeyRevoked
    );
    assert!(kms.set_version_state(1, VersionState::Enabled).is_err());
    assert!(kms.set_version_state(2, VersionState::Destroyed).is_err());
}

#[test]
fn debug_shows_no_material() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    let kms = LocalKms::create(&path, "local:test").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let material = file["versions"][0]["material"].as_str().unwrap().to_owned();
    assert!(!format!("{kms:?}").contains(&material));
}
