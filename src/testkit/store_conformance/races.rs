//! The [`ControlStore`] suite's races: many tasks on separate store instances at once, for
//! compare-and-swap, the write-once attachment and deletion.

#![allow(clippy::expect_used)] // a test suite: failures are panics with messages

use std::sync::Arc;

use super::control::{RACERS, inserted_compartment, inserted_key, now, stored_key};
use crate::control::{Compartment, ControlStore};
use crate::error::ErrorKind;

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
    let back = stored_key(&**store, &key.id).await;
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
    let name = stored_key(&*racers[0], &key.id).await.display_name;
    for i in 0..racers.len() {
        assert!(
            name.contains(&format!(" w{i}")),
            "writer {i}'s change was lost: {name}"
        );
    }
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
        let back = stored_key(&**store, &key.id).await;
        assert_eq!(
            back.is_deleted(),
            deleted.is_ok(),
            "the stored deletion disagrees with its answer"
        );
    }
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
                let back = stored_key(&**store, &key.id).await;
                assert!(
                    !back.is_deleted(),
                    "round {round}: a refused deletion is visible"
                );
            }
        }
    }
}
