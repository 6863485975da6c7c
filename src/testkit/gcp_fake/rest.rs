//! The REST surface of the Cloud KMS fake.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{FakeVersionState, GcpFault, State, lock};
use crate::cipher::{NONCE_LEN, TAG_LEN};
use crate::testkit::http::{Reply, Request};

pub(super) fn error(status: &str, message: &str) -> Reply {
    let code = match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        _ => 500,
    };
    let body = json!({ "error": { "code": code, "message": message, "status": status } });
    Reply::new(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string(),
    )
}

fn ok(body: Value) -> Reply {
    Reply::new(StatusCode::OK, "application/json", body.to_string())
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Reads a base64 bytes field (absent = empty).
fn bytes_field(body: &Value, name: &str) -> Option<Vec<u8>> {
    match body.get(name) {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).ok(),
        Some(_) => None,
    }
}

/// Reads an int64 field, which JSON carries as a string.
fn crc_field(body: &Value, name: &str) -> Option<u32> {
    body.get(name)
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        })
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| n as u32)
}

/// Checks an optional request checksum the way Cloud KMS does.
fn check_crc(body: &Value, crc_name: &str, data_name: &str, data: &[u8]) -> Result<bool, Reply> {
    match crc_field(body, crc_name) {
        None => Ok(false),
        Some(sent) if sent == crc(data) => Ok(true),
        Some(_) => Err(error(
            "INVALID_ARGUMENT",
            &format!(
                "The checksum in field {crc_name} did not match the data in field {data_name}."
            ),
        )),
    }
}

pub(super) async fn handle(state: &std::sync::Mutex<State>, req: Request) -> Reply {
    let path = req.path.replace("%3A", ":").replace("%3a", ":");
    let Some(resource) = path.strip_prefix("/v1/") else {
        return error("NOT_FOUND", "unknown path");
    };
    let (name, method) = match (&req.method, resource.rsplit_once(':')) {
        (&Method::POST, Some((name, m @ ("encrypt" | "decrypt")))) => (name.to_owned(), m),
        (&Method::GET, _) => (resource.to_owned(), "get"),
        _ => {
            return error(
                "NOT_FOUND",
                &format!("the fake does not serve {} {path}", req.method),
            );
        }
    };
    let (latency, fault) = {
        let mut s = lock(state);
        s.calls.push(method.to_owned());
        (s.latency, s.faults.pop_front())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(GcpFault::Delay(d)) => tokio::time::sleep(d).await,
        Some(GcpFault::Throttle) => {
            return error("RESOURCE_EXHAUSTED", "Quota exceeded (injected)");
        }
        Some(GcpFault::Unavailable) => {
            return error(
                "UNAVAILABLE",
                "The service is currently unavailable (injected)",
            );
        }
        Some(GcpFault::Internal) => return error("INTERNAL", "Internal error (injected)"),
        Some(GcpFault::DropConnection) => return Reply::Drop,
        Some(GcpFault::CorruptRequest) if method != "get" => {
            let field = if method == "encrypt" {
                "plaintext"
            } else {
                "ciphertext"
            };
            return error(
                "INVALID_ARGUMENT",
                &format!(
                    "The checksum in field {field}_crc32c did not match the data in field {field}."
                ),
            );
        }
        _ => {}
    }
    let mut s = lock(state);
    let Some(key) = s.keys.get(&name) else {
        return error("NOT_FOUND", &format!("{name} not found."));
    };
    if key.denied {
        return error(
            "PERMISSION_DENIED",
            &format!(
                "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '{name}' (or it may not exist)."
            ),
        );
    }
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => return error("INVALID_ARGUMENT", "request body is not JSON"),
        }
    };
    match method {
        "get" => get(&name, key),
        "encrypt" => encrypt(&name, &mut s, &body, fault.as_ref()),
        _ => decrypt(&name, &mut s, &body, fault.as_ref()),
    }
}

fn version_name(key: &str, version: u32) -> String {
    format!("{key}/cryptoKeyVersions/{version}")
}

fn get(name: &str, key: &super::Key) -> Reply {
    let primary = &key.versions[&key.primary];
    ok(json!({
        "name": name,
        "primary": {
            "name": version_name(name, key.primary),
            "state": primary.state.as_str(),
            "protectionLevel": "SOFTWARE",
            "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
        },
        "purpose": key.purpose,
        "createTime": "2026-11-23T00:00:00Z",
        "versionTemplate": { "protectionLevel": "SOFTWARE", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION" },
    }))
}

fn not_enabled(name: &str, version: u32, state: FakeVersionState) -> Reply {
    error(
        "FAILED_PRECONDITION",
        &format!(
            "{} is not enabled, current state is: {}.",
            version_name(name, version),
            state.as_str()
        ),
    )
}

fn encrypt(name: &str, s: &mut State, body: &Value, fault: Option<&GcpFault>) -> Reply {
    let key = &s.keys[name];
    if key.purpose != "ENCRYPT_DECRYPT" {
        return error(
            "FAILED_PRECONDITION",
            "the key's purpose is not ENCRYPT_DECRYPT",
        );
    }
    let (Some(plaintext), Some(aad)) = (
        bytes_field(body, "plaintext"),
        bytes_field(body, "additionalAuthenticatedData"),
    ) else {
        return error(
            "INVALID_ARGUMENT",
            "plaintext or additionalAuthenticatedData is not base64",
        );
    };
    let plaintext = zeroize::Zeroizing::new(plaintext);
    let verified_plaintext = match check_crc(body, "plaintextCrc32c", "plaintext", &plaintext) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let verified_aad = match check_crc(
        body,
        "additionalAuthenticatedDataCrc32c",
        "additional_authenticated_data",
        &aad,
    ) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let version = &key.versions[&key.primary];
    let cipher = match (&version.state, &version.cipher) {
        (FakeVersionState::Enabled, Some(cipher)) => cipher,
        (state, _) => return not_enabled(name, key.primary, *state),
    };
    let mut nonce = [0u8; NONCE_LEN];
    let _ = getrandom::fill(&mut nonce);
    let mut blob = key.primary.to_be_bytes().to_vec();
    blob.extend_from_slice(&nonce);
    let at = blob.len();
    blob.resize(at + plaintext.len() + TAG_LEN, 0);
    if cipher
        .seal(&nonce, &aad, &plaintext, &mut blob[at..])
        .is_err()
    {
        return error("INTERNAL", "seal failed");
    }
    let mut ciphertext_crc = crc(&blob);
    if fault == Some(&GcpFault::CorruptResponseCrc) {
        ciphertext_crc ^= 1;
    }
    let unverified = fault == Some(&GcpFault::UnverifiedRequest);
    ok(json!({
        "name": version_name(name, key.primary),
        "ciphertext": B64.encode(&blob),
        "ciphertextCrc32c": ciphertext_crc.to_string(),
        "verifiedPlaintextCrc32c": verified_plaintext && !unverified,
        "verifiedAdditionalAuthenticatedDataCrc32c": verified_aad && !unverified,
        "protectionLevel": "SOFTWARE",
    }))
}

fn decrypt(name: &str, s: &mut State, body: &Value, fault: Option<&GcpFault>) -> Reply {
    let key = &s.keys[name];
    let invalid = || {
        error(
            "INVALID_ARGUMENT",
            "Decryption failed: the ciphertext is invalid.",
        )
    };
    let (Some(blob), Some(aad)) = (
        bytes_field(body, "ciphertext"),
        bytes_field(body, "additionalAuthenticatedData"),
    ) else {
        return error(
            "INVALID_ARGUMENT",
            "ciphertext or additionalAuthenticatedData is not base64",
        );
    };
    if let Err(reply) = check_crc(body, "ciphertextCrc32c", "ciphertext", &blob) {
        return reply;
    }
    if let Err(reply) = check_crc(
        body,
        "additionalAuthenticatedDataCrc32c",
        "additional_authenticated_data",
        &aad,
    ) {
        return reply;
    }
    if blob.len() < 4 + NONCE_LEN + TAG_LEN {
        return invalid();
    }
    let number = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
    let Some(version) = key.versions.get(&number) else {
        return invalid();
    };
    let cipher = match (&version.state, &version.cipher) {
        (FakeVersionState::Enabled, Some(cipher)) => cipher,
        (state, _) => return not_enabled(name, number, *state),
    };
    let (nonce, rest) = blob[4..].split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let (Ok(nonce), Ok(tag)) = (
        <&[u8; NONCE_LEN]>::try_from(nonce),
        <&[u8; TAG_LEN]>::try_from(tag),
    ) else {
        return invalid();
    };
    let mut plaintext = zeroize::Zeroizing::new(vec![0u8; ct.len()]);
    if cipher.open(nonce, &aad, ct, tag, &mut plaintext).is_err() {
        return invalid();
    }
    let mut plaintext_crc = crc(&plaintext);
    if fault == Some(&GcpFault::CorruptResponseCrc) {
        plaintext_crc ^= 1;
    }
    ok(json!({
        "plaintext": B64.encode(plaintext.as_slice()),
        "plaintextCrc32c": plaintext_crc.to_string(),
        "usedPrimary": number == key.primary,
        "protectionLevel": "SOFTWARE",
    }))
}
