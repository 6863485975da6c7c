//! The [`ControlStore`] suite: the write-once attachment, compare-and-swap and deletion rules
//! under races of many tasks, the queries, and state kept across a restart.

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;

use time::OffsetDateTime;

use crate::control::{
    Compartment, ControlStore, ExternalKey, ExternalKeyId, ExternalKeyType, ProviderConfig,
    RewrapJob,
};
use crate::error::{ErrorKind, Result};
use crate::ids::CompartmentId;

/// Tasks racing in each race check.
pub(super) const RACERS: usize = 16;

/// Runs every check on the store `open` opens (see the [module docs](super)).
pub async fn control_store<S>(open: impl Fn() -> Arc<S>)
where
    S: ControlStore + ?Sized,
{
    let store = open();
    // Racers each use their own instance over the same state, as separate processes would.
    let racers: Vec<_> = (0..RACERS).map(|_| open()).collect();
    keys_insert_once(&*store).await;
    compare_and_swap(&*store).await;
    super::races::compare_and_swap_race(&racers).await;
    super::races::read_modify_write_loses_nothing(&racers).await;
    attach_is_write_once(&*store).await;
    super::races::attach_race_has_one_winner(&racers).await;
    delete_versus_attach(&*store).await;
    super::races::delete_attach_race_never_crosses(&racers).await;
    attached_compartments_query(&*store).await;
    rewrap_jobs_round_trip(&*store).await;
    super::leases::lease_race_has_one_holder(&racers).await;
    super::leases::leases_renew_release_and_lapse(&*store).await;
    super::races::delete_races_attachments_and_creations(&racers).await;
    restart_keeps_state(&*store, open).await;
}

pub(super) fn now() -> OffsetDateTime {
    crate::control::now()
}

pub(super) fn new_key() -> ExternalKey {
    let at = now();
    ExternalKey {
        id: ExternalKeyId::generate().expect("rng"),
        kind: ExternalKeyType::ExternalKey,
        display_name: "suite".into(),
        geo: "us".into(),
        provider_config: ProviderConfig::Local {
            key_file: "/nonexistent/suite.key".into(),
        },
        created_at: at,
        updated_at: at,
        previous_provider_configs: Vec::new(),
        last_validation: None,
        deleted_at: None,
    }
}

pub(super) async fn inserted_key(store: &(impl ControlStore + ?Sized)) -> ExternalKey {
    let key = new_key();
    store
        .insert_external_key(&key)
        .await
        .expect("insert_external_key failed");
    key
}

pub(super) async fn inserted_compartment(store: &(impl ControlStore + ?Sized)) -> CompartmentId {
    let c = Compartment::new(now()).expect("rng");
    store
        .insert_compartment(&c)
        .await
        .expect("insert_compartment failed");
    c.compartment_id
}

/// The stored configuration `id`, which must exist.
pub(super) async fn stored_key(
    store: &(impl ControlStore + ?Sized),
    id: &ExternalKeyId,
) -> ExternalKey {
    store
        .external_key(id)
        .await
        .expect("read failed")
        .expect("the configuration is gone")
}

fn kind<T: std::fmt::Debug>(result: &Result<T>) -> Option<ErrorKind> {
    result.as_ref().err().map(|e| e.kind())
}

/// A configuration is inserted once, reads back equal and is listed.
pub async fn keys_insert_once(store: &(impl ControlStore + ?Sized)) {
    let key = inserted_key(store).await;
    let again = store.insert_external_key(&key).await;
    assert_eq!(
        kind(&again),
        Some(ErrorKind::AlreadyExists),
        "a second insert of an id succeeded"
    );
    let back = store
        .external_key(&key.id)
        .await
        .expect("external_key failed");
    assert_eq!(
        back.as_ref(),
        Some(&key),
        "the configuration reads back different"
    );
    let all = store.external_keys().await.expect("external_keys failed");
    assert!(
        all.iter().any(|k| k.id == key.id),
        "external_keys does not list it"
    );
    let unknown = ExternalKeyId::generate().expect("rng");
    assert_eq!(
        store
            .external_key(&unknown)
            .await
            .expect("external_key failed"),
        None
    );
}

/// An update lands only against the `updated_at` it read; an unknown id is not found.
pub async fn compare_and_swap(store: &(impl ControlStore + ?Sized)) {
    let key = inserted_key(store).await;
    let mut changed = key.clone();
    changed.display_name = "renamed".into();
    changed.updated_at = key.updated_at + time::Duration::microseconds(1);
    store
        .update_external_key(&changed, key.updated_at)
        .await
        .expect("an update with the current token failed");
    let mut stale = key.clone();
    stale.display_name = "lost".into();
    let lost = store.update_external_key(&stale, key.updated_at).await;
    assert_eq!(
        kind(&lost),
        Some(ErrorKind::AlreadyExists),
        "an update with a stale token landed"
    );
    let back = stored_key(store, &key.id).await;
    assert_eq!(back.display_name, "renamed");
    let unknown = new_key();
    let missing = store
        .update_external_key(&unknown, unknown.updated_at)
        .await;
    assert_eq!(kind(&missing), Some(ErrorKind::NotFound));
}

/// Attaching is write-once: the same key again changes nothing, another key is a conflict;
/// unknown compartments and keys are not found.
pub async fn attach_is_write_once(store: &(impl ControlStore + ?Sized)) {
    let (a, b) = (inserted_key(store).await, inserted_key(store).await);
    let c = inserted_compartment(store).await;
    let attached = store.attach(&c, &a.id, now()).await.expect("attach failed");
    assert_eq!(attached.external_key_id.as_ref(), Some(&a.id));
    let same = store
        .attach(&c, &a.id, now())
        .await
        .expect("attaching the same key again failed");
    assert_eq!(same.external_key_id.as_ref(), Some(&a.id));
    let other = store.attach(&c, &b.id, now()).await;
    assert_eq!(
        kind(&other),
        Some(ErrorKind::AlreadyExists),
        "a second key was attached"
    );
    let back = store
        .compartment(&c)
        .await
        .expect("read failed")
        .expect("gone");
    assert_eq!(
        back.external_key_id.as_ref(),
        Some(&a.id),
        "the attachment changed"
    );
    let unknown_c = Compartment::new(now()).expect("rng").compartment_id;
    assert_eq!(
        kind(&store.attach(&unknown_c, &a.id, now()).await),
        Some(ErrorKind::NotFound)
    );
    let unknown_k = ExternalKeyId::generate().expect("rng");
    let fresh = inserted_compartment(store).await;
    assert_eq!(
        kind(&store.attach(&fresh, &unknown_k, now()).await),
        Some(ErrorKind::NotFound)
    );
}

/// Deleting an attached key needs `force`; a deleted key cannot be attached or given to a new
/// compartment; deleting twice keeps the first time.
pub async fn delete_versus_attach(store: &(impl ControlStore + ?Sized)) {
    let key = inserted_key(store).await;
    let c = inserted_compartment(store).await;
    store
        .attach(&c, &key.id, now())
        .await
        .expect("attach failed");
    let refused = store.delete_external_key(&key.id, now(), false).await;
    assert_eq!(
        kind(&refused),
        Some(ErrorKind::AlreadyExists),
        "an attached key was deleted without force"
    );
    let kept = stored_key(store, &key.id).await;
    assert!(!kept.is_deleted(), "a refused deletion is visible");
    let deleted = store
        .delete_external_key(&key.id, now(), true)
        .await
        .expect("forced delete failed");
    let first = deleted.deleted_at.expect("not marked deleted");
    let again = store
        .delete_external_key(&key.id, now(), true)
        .await
        .expect("second delete failed");
    assert_eq!(
        again.deleted_at,
        Some(first),
        "a second deletion moved deleted_at"
    );

    let fresh = inserted_compartment(store).await;
    assert_eq!(
        kind(&store.attach(&fresh, &key.id, now()).await),
        Some(ErrorKind::Validation),
        "a deleted key was attached"
    );
    let mut with_key = Compartment::new(now()).expect("rng");
    with_key.external_key_id = Some(key.id.clone());
    assert_eq!(
        kind(&store.insert_compartment(&with_key).await),
        Some(ErrorKind::Validation),
        "a compartment was created with a deleted key"
    );
    let unknown = ExternalKeyId::generate().expect("rng");
    assert_eq!(
        kind(&store.delete_external_key(&unknown, now(), true).await),
        Some(ErrorKind::NotFound)
    );
}

/// `attached_compartments` names exactly the compartments attached to a key, sorted.
pub async fn attached_compartments_query(store: &(impl ControlStore + ?Sized)) {
    let (key, other) = (inserted_key(store).await, inserted_key(store).await);
    let mut mine = Vec::new();
    for _ in 0..5 {
        let c = inserted_compartment(store).await;
        store
            .attach(&c, &key.id, now())
            .await
            .expect("attach failed");
        mine.push(c);
    }
    let theirs = inserted_compartment(store).await;
    store
        .attach(&theirs, &other.id, now())
        .await
        .expect("attach failed");
    inserted_compartment(store).await;
    mine.sort();
    let found = store
        .attached_compartments(&key.id)
        .await
        .expect("attached_compartments failed");
    assert_eq!(found, mine, "attached_compartments is wrong or unsorted");
    let none = ExternalKeyId::generate().expect("rng");
    assert!(
        store
            .attached_compartments(&none)
            .await
            .expect("query failed")
            .is_empty()
    );
}

/// A rewrap job's progress reads back as saved, and a later save replaces it.
pub async fn rewrap_jobs_round_trip(store: &(impl ControlStore + ?Sized)) {
    let key = inserted_key(store).await;
    assert_eq!(
        store.rewrap_job(&key.id).await.expect("rewrap_job failed"),
        None
    );
    let mut job = RewrapJob::new(key.id.clone(), "local:suite".into());
    store
        .put_rewrap_job(&job)
        .await
        .expect("put_rewrap_job failed");
    assert_eq!(
        store
            .rewrap_job(&key.id)
            .await
            .expect("read failed")
            .as_ref(),
        Some(&job)
    );
    job.examined = 7;
    job.rewrapped = 5;
    store.put_rewrap_job(&job).await.expect("second put failed");
    assert_eq!(
        store.rewrap_job(&key.id).await.expect("read failed"),
        Some(job),
        "a save did not replace the job"
    );
}

/// A store opened again over the same state has every configuration, compartment, attachment
/// and job.
pub async fn restart_keeps_state<S: ControlStore + ?Sized>(
    store: &S,
    reopen: impl FnOnce() -> Arc<S>,
) {
    let key = inserted_key(store).await;
    let c = inserted_compartment(store).await;
    store
        .attach(&c, &key.id, now())
        .await
        .expect("attach failed");
    let job = RewrapJob::new(key.id.clone(), "local:suite".into());
    store
        .put_rewrap_job(&job)
        .await
        .expect("put_rewrap_job failed");
    let reopened = reopen();
    assert_eq!(
        reopened.external_key(&key.id).await.expect("read failed"),
        Some(key.clone()),
        "the configuration is gone after reopening"
    );
    let back = reopened
        .compartment(&c)
        .await
        .expect("read failed")
        .expect("the compartment is gone after reopening");
    assert_eq!(
        back.external_key_id,
        Some(key.id.clone()),
        "the attachment is gone after reopening"
    );
    assert_eq!(
        reopened
            .attached_compartments(&key.id)
            .await
            .expect("query failed"),
        vec![c]
    );
    assert_eq!(
        reopened.rewrap_job(&key.id).await.expect("read failed"),
        Some(job),
        "the job is gone after reopening"
    );
}
