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
const RACERS: usize = 16;

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
    compare_and_swap_race(&racers).await;
    read_modify_write_loses_nothing(&racers).await;
    attach_is_write_once(&*store).await;
    attach_race_has_one_winner(&racers).await;
    delete_versus_attach(&*store).await;
    delete_attach_race_never_crosses(&racers).await;
    attached_compartments_query(&*store).await;
    rewrap_jobs_round_trip(&*store).await;
    delete_races_attachments_and_creations(&racers).await;
    restart_keeps_state(&*store, open).await;
}

fn now() -> OffsetDateTime {
    crate::control::now()
}

fn new_key() -> ExternalKey {
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

async fn inserted_key(store: &(impl ControlStore + ?Sized)) -> ExternalKey {
    let key = new_key();
    store
        .insert_external_key(&key)
        .await
        .expect("insert_external_key failed");
    key
}

async fn inserted_compartment(store: &(impl ControlStore + ?Sized)) -> CompartmentId {
    let c = Compartment::new(now()).expect("rng");
    store
        .insert_compartment(&c)
        .await
        .expect("insert_compartment failed");
    c.compartment_id
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
    let back = store
        .external_key(&key.id)
        .await
        .expect("read failed")
        .expect("gone");
    assert_eq!(back.display_name, "renamed");
    let unknown = new_key();
    let missing = store
        .update_external_key(&unknown, unknown.updated_at)
        .await;
    assert_eq!(kind(&missing), Some(ErrorKind::NotFound));
}

/// Many tasks updating from the same read, one per store instance in `racers`: exactly one
/// lands.
pub async fn compare_and_swap_race<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let store = &racers[0];
    let key = inserted_key(&**store).await;
    let tasks: Vec<_> = (0..racers.len())
        .map(|i| {
            let (store, mut mine) = (racers[i].clone(), key.clone());
            mine.display_name = format!("writer {i}");
            mine.updated_at = key.updated_at + time::Duration::microseconds(1);
            let read_at = key.updated_at;
            tokio::spawn(async move { store.update_external_key(&mine, read_at).await.map(|()| i) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task panicked") {
            Ok(i) => winners.push(i),
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "a loser got {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "compare-and-swap let {} writers land",
        winners.len()
    );
    let back = store
        .external_key(&key.id)
        .await
        .expect("read failed")
        .expect("gone");
    assert_eq!(
        back.display_name,
        format!("writer {}", winners[0]),
        "the stored value is not the winner's"
    );
}

/// Writers on every instance of `racers` each add a mark by read, change, compare-and-swap,
/// retried on conflict (what the control plane does): every mark survives.
pub async fn read_modify_write_loses_nothing<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let key = inserted_key(&*racers[0]).await;
    let writers: Vec<_> = racers
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let (store, id) = (store.clone(), key.id.clone());
            tokio::spawn(async move {
                for _ in 0..1000 {
                    let mut k = store
                        .external_key(&id)
                        .await
                        .expect("read failed")
                        .expect("gone");
                    let read_at = k.updated_at;
                    k.display_name.push_str(&format!(" w{i}"));
                    k.updated_at = read_at + time::Duration::microseconds(1);
                    match store.update_external_key(&k, read_at).await {
                        Ok(()) => return,
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "a writer got {e}")
                        }
                    }
                }
                panic!("writer {i} lost 1000 compare-and-swaps in a row");
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer panicked");
    }
    let name = racers[0]
        .external_key(&key.id)
        .await
        .expect("read failed")
        .expect("gone")
        .display_name;
    for i in 0..racers.len() {
        assert!(
            name.contains(&format!(" w{i}")),
            "writer {i}'s change was lost: {name}"
        );
    }
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

/// Many tasks (one per store instance in `racers`) attaching different keys to one
/// compartment: one key wins, everyone who succeeded got that key, the rest conflict.
pub async fn attach_race_has_one_winner<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let store = &racers[0];
    let c = inserted_compartment(&**store).await;
    let mut keys = Vec::new();
    for _ in racers {
        keys.push(inserted_key(&**store).await.id);
    }
    let tasks: Vec<_> = keys
        .iter()
        .cloned()
        .zip(racers)
        .map(|(key, store)| {
            let (store, c) = (store.clone(), c.clone());
            tokio::spawn(async move { store.attach(&c, &key, now()).await })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    for t in tasks {
        match t.await.expect("task panicked") {
            Ok(c) => {
                winners.insert(c.external_key_id.expect("attached without a key"));
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "a loser got {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{} different keys were attached to one compartment",
        winners.len()
    );
    let back = store
        .compartment(&c)
        .await
        .expect("read failed")
        .expect("gone");
    assert_eq!(
        back.external_key_id.as_ref(),
        winners.iter().next(),
        "the stored key is not the winner"
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
    let kept = store
        .external_key(&key.id)
        .await
        .expect("read failed")
        .expect("gone");
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

/// An attachment and a deletion (without force) racing, on two instances of `racers`, many
/// times: never both succeed.
pub async fn delete_attach_race_never_crosses<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let store = &racers[0];
    for round in 0..RACERS {
        let key = inserted_key(&**store).await;
        let c = inserted_compartment(&**store).await;
        let attach = {
            let store = racers[round % racers.len()].clone();
            let (c, id) = (c.clone(), key.id.clone());
            tokio::spawn(async move { store.attach(&c, &id, now()).await })
        };
        let delete = {
            let store = racers[(round + 1) % racers.len()].clone();
            let id = key.id.clone();
            tokio::spawn(async move { store.delete_external_key(&id, now(), false).await })
        };
        let attached = attach.await.expect("task panicked");
        let deleted = delete.await.expect("task panicked");
        assert!(
            !(attached.is_ok() && deleted.is_ok()),
            "a key was attached and deleted (without force) at once"
        );
        assert!(
            attached.is_ok() || deleted.is_ok(),
            "neither the attachment nor the deletion happened"
        );
        let back = store
            .external_key(&key.id)
            .await
            .expect("read failed")
            .expect("gone");
        assert_eq!(
            back.is_deleted(),
            deleted.is_ok(),
            "the stored deletion disagrees with its answer"
        );
    }
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

/// A deletion (without force) racing several attachments and a creation with the key, all
/// released at once on separate instances of `racers`, many times: either the deletion is
/// refused (409) and the key stays, or it lands and nothing ends up attached to the key.
pub async fn delete_races_attachments_and_creations<S: ControlStore + ?Sized>(racers: &[Arc<S>]) {
    let store = &racers[0];
    for round in 0..RACERS {
        let key = inserted_key(&**store).await;
        let mut compartments = Vec::new();
        for _ in 0..4 {
            compartments.push(inserted_compartment(&**store).await);
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(compartments.len() + 2));
        let pick = |n: usize| racers[(round + n) % racers.len()].clone();
        let mut attaches = Vec::new();
        for (n, c) in compartments.iter().enumerate() {
            let (store, barrier, c, id) = (pick(n), barrier.clone(), c.clone(), key.id.clone());
            attaches.push(tokio::spawn(async move {
                barrier.wait().await;
                store.attach(&c, &id, now()).await.map(drop)
            }));
        }
        let created = {
            let (store, barrier) = (pick(5), barrier.clone());
            let mut c = Compartment::new(now()).expect("rng");
            c.external_key_id = Some(key.id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.insert_compartment(&c).await
            })
        };
        let deleted = {
            let (store, barrier, id) = (pick(6), barrier.clone(), key.id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete_external_key(&id, now(), false).await
            })
        };
        let deleted = deleted.await.expect("task panicked");
        for a in attaches {
            let _ = a.await.expect("task panicked");
        }
        let _ = created.await.expect("task panicked");
        let attached = store
            .attached_compartments(&key.id)
            .await
            .expect("attached_compartments failed");
        match deleted {
            Ok(k) => {
                assert!(k.is_deleted(), "a deletion answered a key not deleted");
                assert!(
                    attached.is_empty(),
                    "round {round}: {} compartment(s) attached to a key deleted without force",
                    attached.len()
                );
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "round {round}: {e}");
                assert!(
                    !attached.is_empty(),
                    "round {round}: refused with nothing attached"
                );
                let back = store
                    .external_key(&key.id)
                    .await
                    .expect("read failed")
                    .expect("gone");
                assert!(
                    !back.is_deleted(),
                    "round {round}: a refused deletion is visible"
                );
            }
        }
    }
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
