//! Every way of altering a streamed object is refused, by every reader, and no reader ever
//! hands out a byte that is not the true plaintext.

use cmek::format::{BODY_PREFIX_LEN, SEALED_CHUNK_LEN};
use cmek::stream::StreamForm;
use cmek::{Client, CompartmentId};

use super::{client, data, open_std, seal};
use crate::common::compartment;

/// Refused by decrypt, by the std reader (which may release only a true prefix), and by a
/// range read of everything.
async fn assert_refused(
    client: &Client,
    tenant: &CompartmentId,
    object: &[u8],
    plaintext: &[u8],
    what: &str,
) {
    assert!(
        client.decrypt(tenant, object, b"aad").await.is_err(),
        "decrypt accepted {what}"
    );
    for read_size in [16_384, 1_000] {
        let (released, outcome) = open_std(client, tenant, object, b"aad", read_size).await;
        assert!(outcome.is_err(), "the reader accepted {what}");
        assert!(
            plaintext.starts_with(&released),
            "the reader released bytes that are not the plaintext ({what})"
        );
    }
    let object = object.to_vec();
    assert!(
        client
            .decrypt_range(tenant, &object, .., b"aad")
            .await
            .is_err(),
        "a range read accepted {what}"
    );
}

/// The head length and the sealed chunks of `object`.
fn split(object: &[u8]) -> (usize, Vec<Vec<u8>>) {
    let head = cmek::inspect(object).unwrap().header_len + BODY_PREFIX_LEN;
    let chunks = object[head..]
        .chunks(SEALED_CHUNK_LEN)
        .map(<[u8]>::to_vec)
        .collect();
    (head, chunks)
}

fn join(head: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = head.to_vec();
    chunks.iter().for_each(|c| out.extend_from_slice(c));
    out
}

#[tokio::test]
async fn every_flipped_bit_is_refused() {
    let client = client();
    let tenant = compartment("tenant-a");
    for form in [StreamForm::Compact, StreamForm::SelfContained] {
        let plaintext = data(40_000, 11);
        let object = seal(&client, &tenant, form, &plaintext, b"aad").await;
        let (head, _) = split(&object);
        // Every header and prefix byte; in the chunks, each chunk's edges and a sample.
        let positions = (0..head).chain((head..object.len()).filter(|i| {
            let at = (i - head) % SEALED_CHUNK_LEN;
            !(2..=SEALED_CHUNK_LEN - 18).contains(&at) || i % 997 == 0 || *i == object.len() - 1
        }));
        for i in positions {
            let mut bad = object.clone();
            bad[i] ^= 0x01;
            assert_refused(
                &client,
                &tenant,
                &bad,
                &plaintext,
                &format!("{form:?} byte {i}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn moved_dropped_and_foreign_chunks_are_refused() {
    let client = client();
    let tenant = compartment("tenant-a");
    for form in [StreamForm::Compact, StreamForm::SelfContained] {
        let plaintext = data(3 * 16_384 + 100, 12);
        let object = seal(&client, &tenant, form, &plaintext, b"aad").await;
        let other = seal(&client, &tenant, form, &data(3 * 16_384 + 100, 13), b"aad").await;
        let (h, chunks) = split(&object);
        let (oh, other_chunks) = split(&other);
        assert_eq!(chunks.len(), 4);
        let head = &object[..h];
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for drop in 0..chunks.len() {
            let mut c = chunks.clone();
            c.remove(drop);
            cases.push((format!("chunk {drop} dropped"), join(head, &c)));
        }
        let mut c = chunks.clone();
        c.swap(0, 1);
        cases.push(("chunks 0 and 1 swapped".into(), join(head, &c)));
        let mut c = chunks.clone();
        c[1] = c[0].clone();
        cases.push(("chunk 0 in place of chunk 1".into(), join(head, &c)));
        let mut c = chunks.clone();
        c.insert(1, chunks[0].clone());
        cases.push(("chunk 0 duplicated".into(), join(head, &c)));
        let mut c = chunks.clone();
        c[1] = other_chunks[1].clone();
        cases.push(("chunk 1 of another object, same DEK".into(), join(head, &c)));
        cases.push(("another object's head".into(), join(&other[..oh], &chunks)));
        let mut c = chunks.clone();
        c.push(chunks[3].clone());
        cases.push(("final chunk twice".into(), join(head, &c)));
        for (what, bad) in cases {
            assert_refused(
                &client,
                &tenant,
                &bad,
                &plaintext,
                &format!("{form:?}: {what}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn truncated_and_extended_objects_are_refused() {
    let client = client();
    let tenant = compartment("tenant-a");
    for form in [StreamForm::Compact, StreamForm::SelfContained] {
        for len in [0usize, 16_384, 2 * 16_384 + 5] {
            let plaintext = data(len, 14);
            let object = seal(&client, &tenant, form, &plaintext, b"aad").await;
            let (head, _) = split(&object);
            let mut cuts: Vec<usize> = vec![0, 1, 19, 20, head - 1, head, head + 1];
            let mut boundary = head;
            while boundary < object.len() {
                cuts.extend([boundary, boundary + 15, boundary + 16, boundary + 8000]);
                boundary += SEALED_CHUNK_LEN;
            }
            cuts.push(object.len() - 1);
            for cut in cuts.into_iter().filter(|&c| c < object.len()) {
                let what = format!("{form:?} {len} cut at {cut} of {}", object.len());
                assert_refused(&client, &tenant, &object[..cut], &plaintext, &what).await;
            }
            for extra in [&[0u8][..], &[0u8; 16][..], &[7u8; SEALED_CHUNK_LEN][..]] {
                let mut longer = object.clone();
                longer.extend_from_slice(extra);
                let what = format!("{form:?} {len} with {} bytes appended", extra.len());
                assert_refused(&client, &tenant, &longer, &plaintext, &what).await;
            }
        }
    }
}
