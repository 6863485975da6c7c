//! Many tasks, many compartments, both forms, tight limits: everything round-trips and no DEK
//! ever exceeds its message limit.

mod common;

use std::collections::HashMap;

use cmek::{CacheConfig, inspect};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_many_compartments_under_tight_limits() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 50;
    cache.encrypt_capacity = 8; // fewer slots than compartments: constant eviction
    cache.decrypt_capacity = 64;
    let (client, kms) = faulty_client(cache);
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..100 {
                    let c = compartment(&format!("tenant-{}", (t * 7 + i) % 16));
                    let pt = format!("task {t} record {i}").into_bytes();
                    let aad = format!("{t}/{i}").into_bytes();
                    let env = if i % 2 == 0 {
                        client.encrypt(&c, &pt, &aad).await.unwrap()
                    } else {
                        client.encrypt_compact(&c, &pt, &aad).await.unwrap()
                    };
                    assert_eq!(client.decrypt(&c, &env, &aad).await.unwrap(), pt);
                    written.push((c, env, pt, aad));
                }
                written
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut per_dek: HashMap<String, u64> = HashMap::new();
    for (c, env, pt, aad) in &all {
        assert_eq!(&client.decrypt(c, env, aad).await.unwrap(), pt);
        *per_dek.entry(inspect(env).unwrap().dek_id).or_default() += 1;
    }
    // Both forms name their DEK: none was used for more than the limit of 50 messages.
    assert!(per_dek.values().all(|&n| n <= 50), "{per_dek:?}");
    let s = client.stats();
    assert!(s.deks_created >= 6400 / 50, "{s:?}");
    assert_eq!(s.deks_created, kms.wrap_calls());
}
