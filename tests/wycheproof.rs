//! Both AES-256-GCM providers against Wycheproof's AES-GCM vectors (256-bit key, 96-bit nonce,
//! 128-bit tag: the only parameters the envelope format uses; other groups are skipped).

use cmek::CipherProvider;
use cmek::internal::RawCipher;
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

#[test]
fn aes_256_gcm_vectors_pass_with_every_provider() {
    let set = TestSet::load(TestName::AesGcm).unwrap();
    for &provider in CipherProvider::available() {
        let (mut valid, mut invalid) = (0, 0);
        for group in &set.test_groups {
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in &group.tests {
                let key: [u8; 32] = t.key[..].try_into().unwrap();
                let nonce: [u8; 12] = t.nonce[..].try_into().unwrap();
                let tag: [u8; 16] = t.tag[..].try_into().unwrap();
                let cipher = RawCipher::new(provider, &key).unwrap();
                let mut opened = vec![0u8; t.ct.len()];
                let open = cipher.open(&nonce, &t.aad, &t.ct, &tag, &mut opened);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        let mut sealed = vec![0u8; t.pt.len() + 16];
                        cipher.seal(&nonce, &t.aad, &t.pt, &mut sealed).unwrap();
                        assert_eq!(
                            &sealed[..t.pt.len()],
                            &t.ct[..],
                            "{provider} tc {} ct",
                            t.tc_id
                        );
                        assert_eq!(
                            &sealed[t.pt.len()..],
                            &t.tag[..],
                            "{provider} tc {} tag",
                            t.tc_id
                        );
                        open.unwrap_or_else(|e| panic!("{provider} tc {}: {e}", t.tc_id));
                        assert_eq!(opened, &t.pt[..], "{provider} tc {}", t.tc_id);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(
                            open.is_err(),
                            "{provider} accepted invalid tc {}: {}",
                            t.tc_id,
                            t.comment
                        );
                        assert!(
                            opened.iter().all(|&b| b == 0),
                            "{provider} tc {} left output",
                            t.tc_id
                        );
                        invalid += 1;
                    }
                }
            }
        }
        assert!(
            valid >= 30 && invalid >= 20,
            "{provider}: only {valid} valid / {invalid} invalid vectors ran"
        );
    }
}
