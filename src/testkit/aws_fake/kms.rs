//! The TrentService operations of the fake.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::{FAKE_ACCOUNT, FakeKey, FakeKeySpec, FakeKeyState, State, new_cipher, now_secs};
use crate::cipher::{NONCE_LEN, TAG_LEN};
use crate::testkit::http::{Reply, Request};

const BLOB_VERSION: u8 = 0x01;
const KEY_ID_LEN: usize = 36;

/// A JSON 1.1 error answer, as AWS sends it.
pub(super) fn error(status: u16, code: &str, message: &str) -> Reply {
    let body = json!({ "__type": code, "message": message }).to_string();
    Reply::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        "application/x-amz-json-1.1",
        body,
    )
    .with_header("x-amzn-requestid", &request_id())
}

fn ok(body: Value) -> Reply {
    Reply::new(
        StatusCode::OK,
        "application/x-amz-json-1.1",
        body.to_string(),
    )
    .with_header("x-amzn-requestid", &request_id())
}

fn request_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    crate::ids::hex_encode(&b)
}

fn uuid() -> String {
    let h = request_id();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub(super) fn create_key(state: &mut State, spec: FakeKeySpec) -> String {
    let id = if spec.multi_region {
        format!("mrk-{}", &request_id())
    } else {
        uuid()
    };
    let arn = format!("arn:aws:kms:{}:{FAKE_ACCOUNT}:key/{id}", spec.region);
    state.next_id += 1;
    state.keys.insert(
        id,
        FakeKey {
            arn: arn.clone(),
            spec,
            state: FakeKeyState::Enabled,
            created: now_secs() as f64,
            cipher: new_cipher(),
            denied: false,
            allowed_compartments: None,
        },
    );
    arn
}

/// The access key id of the `Authorization` header (`Credential=AKID/...`).
pub(super) fn access_key_id(req: &Request) -> String {
    req.header("authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .unwrap_or("")
        .to_owned()
}

/// Resolves `KeyId` (a key ARN or a bare key id) to the key id.
fn key_id_of(state: &State, key_id: &str) -> Option<String> {
    if state.keys.contains_key(key_id) {
        return Some(key_id.to_owned());
    }
    state
        .keys
        .iter()
        .find(|(_, k)| k.arn == key_id)
        .map(|(id, _)| id.clone())
}

/// The encryption context as AAD: sorted `key=value` pairs in JSON.
fn context_aad(body: &Value) -> Vec<u8> {
    let map: BTreeMap<String, String> = body
        .get("EncryptionContext")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_vec(&map).unwrap_or_default()
}

/// The key policy's condition on `kms:EncryptionContext:compartment_id`, if it has one.
fn context_allowed(key: &FakeKey, body: &Value) -> Result<(), Reply> {
    let Some(allowed) = &key.allowed_compartments else {
        return Ok(());
    };
    let compartment = body
        .get("EncryptionContext")
        .and_then(|c| c.get("compartment_id"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if allowed.iter().any(|a| a == compartment) {
        Ok(())
    } else {
        Err(error(
            400,
            "AccessDeniedException",
            &format!(
                "User is not authorized to use {} with this encryption context (key policy condition)",
                key.arn
            ),
        ))
    }
}

fn usable(key: &FakeKey) -> Result<(), Reply> {
    if key.denied {
        return Err(error(
            400,
            "AccessDeniedException",
            &format!("User is not authorized to use {} (key policy)", key.arn),
        ));
    }
    match key.state {
        FakeKeyState::Enabled => Ok(()),
        FakeKeyState::Disabled => Err(error(
            400,
            "DisabledException",
            &format!("{} is disabled.", key.arn),
        )),
        FakeKeyState::PendingDeletion => Err(error(
            400,
            "KMSInvalidStateException",
            &format!("{} is pending deletion.", key.arn),
        )),
    }
}

pub(super) fn handle(state: &mut State, op: &str, req: &Request) -> Reply {
    let akid = access_key_id(req);
    if akid.starts_with("ASIA") {
        match state.sessions.get(&akid) {
            Some(&expiry) if expiry > now_secs() => {}
            Some(_) => {
                return error(
                    400,
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                );
            }
            None => {
                return error(
                    400,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                );
            }
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "SerializationException", "request body is not JSON");
    };
    match op {
        "CreateKey" => {
            let mut spec = FakeKeySpec::default();
            if let Some(u) = body.get("KeyUsage").and_then(Value::as_str) {
                spec.key_usage = u.to_owned();
            }
            if let Some(s) = body.get("KeySpec").and_then(Value::as_str) {
                spec.key_spec = s.to_owned();
            }
            spec.multi_region = body
                .get("MultiRegion")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let arn = create_key(state, spec);
            match key_id_of(state, &arn) {
                Some(id) => ok(json!({ "KeyMetadata": metadata(&id, &state.keys[&id]) })),
                None => error(500, "KMSInternalException", "lost the new key"),
            }
        }
        "DescribeKey"
        | "DisableKey"
        | "EnableKey"
        | "ScheduleKeyDeletion"
        | "CancelKeyDeletion" => {
            let requested = body
                .get("KeyId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(id) = key_id_of(state, requested) else {
                return error(
                    400,
                    "NotFoundException",
                    &format!("Key '{requested}' does not exist"),
                );
            };
            let Some(key) = state.keys.get_mut(&id) else {
                return error(
                    400,
                    "NotFoundException",
                    &format!("Key '{requested}' does not exist"),
                );
            };
            match op {
                "DisableKey" => key.state = FakeKeyState::Disabled,
                "EnableKey" => key.state = FakeKeyState::Enabled,
                "ScheduleKeyDeletion" => key.state = FakeKeyState::PendingDeletion,
                "CancelKeyDeletion" => key.state = FakeKeyState::Disabled,
                _ => return ok(json!({ "KeyMetadata": metadata(&id, key) })),
            }
            ok(json!({ "KeyId": key.arn }))
        }
        "Encrypt" => encrypt(state, &body),
        "Decrypt" => decrypt(state, &body),
        other => error(
            400,
            "UnknownOperationException",
            &format!("the fake does not implement {other}"),
        ),
    }
}

fn metadata(id: &str, key: &FakeKey) -> Value {
    json!({
        "AWSAccountId": FAKE_ACCOUNT,
        "KeyId": id,
        "Arn": key.arn,
        "CreationDate": key.created,
        "Enabled": key.state == FakeKeyState::Enabled,
        "Description": "",
        "KeyUsage": key.spec.key_usage,
        "KeyState": key.state.as_str(),
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": key.spec.key_spec,
        "KeySpec": key.spec.key_spec,
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": key.spec.multi_region,
    })
}

fn encrypt(state: &mut State, body: &Value) -> Reply {
    let requested = body
        .get("KeyId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(id) = key_id_of(state, requested) else {
        return error(
            400,
            "NotFoundException",
            &format!("Key '{requested}' does not exist"),
        );
    };
    let key = &state.keys[&id];
    if let Err(reply) = usable(key).and_then(|()| context_allowed(key, body)) {
        return reply;
    }
    if key.spec.key_usage != "ENCRYPT_DECRYPT" || key.spec.key_spec != "SYMMETRIC_DEFAULT" {
        return error(
            400,
            "InvalidKeyUsageException",
            "key cannot be used to encrypt",
        );
    }
    let Some(plaintext) = body
        .get("Plaintext")
        .and_then(Value::as_str)
        .and_then(|p| B64.decode(p).ok())
        .map(zeroize::Zeroizing::new)
    else {
        return error(
            400,
            "ValidationException",
            "Plaintext is missing or not base64",
        );
    };
    let mut nonce = [0u8; NONCE_LEN];
    let _ = getrandom::fill(&mut nonce);
    let mut blob = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    blob.push(BLOB_VERSION);
    blob.extend_from_slice(format!("{id:>36}").as_bytes());
    blob.extend_from_slice(&nonce);
    let at = blob.len();
    blob.resize(at + plaintext.len() + TAG_LEN, 0);
    if key
        .cipher
        .seal(&nonce, &context_aad(body), &plaintext, &mut blob[at..])
        .is_err()
    {
        return error(500, "KMSInternalException", "seal failed");
    }
    ok(json!({
        "CiphertextBlob": B64.encode(&blob),
        "KeyId": key.arn,
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

fn decrypt(state: &mut State, body: &Value) -> Reply {
    let invalid = || error(400, "InvalidCiphertextException", "");
    let Some(blob) = body
        .get("CiphertextBlob")
        .and_then(Value::as_str)
        .and_then(|c| B64.decode(c).ok())
    else {
        return error(
            400,
            "ValidationException",
            "CiphertextBlob is missing or not base64",
        );
    };
    if blob.len() < 1 + KEY_ID_LEN + NONCE_LEN + TAG_LEN || blob[0] != BLOB_VERSION {
        return invalid();
    }
    let blob_key = String::from_utf8_lossy(&blob[1..1 + KEY_ID_LEN])
        .trim_start()
        .to_owned();
    // The requested key is looked up first: once it is deleted, KMS answers NotFoundException.
    if let Some(requested) = body.get("KeyId").and_then(Value::as_str) {
        match key_id_of(state, requested) {
            None => {
                return error(
                    400,
                    "NotFoundException",
                    &format!("Key '{requested}' does not exist"),
                );
            }
            Some(id) if id != blob_key => {
                return error(
                    400,
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this operation.",
                );
            }
            Some(_) => {}
        }
    }
    let Some(key) = state.keys.get(&blob_key) else {
        return invalid();
    };
    if let Err(reply) = usable(key).and_then(|()| context_allowed(key, body)) {
        return reply;
    }
    let rest = &blob[1 + KEY_ID_LEN..];
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let (Ok(nonce), Ok(tag)) = (
        <&[u8; NONCE_LEN]>::try_from(nonce),
        <&[u8; TAG_LEN]>::try_from(tag),
    ) else {
        return invalid();
    };
    let mut plaintext = zeroize::Zeroizing::new(vec![0u8; ct.len()]);
    if key
        .cipher
        .open(nonce, &context_aad(body), ct, tag, &mut plaintext)
        .is_err()
    {
        return invalid();
    }
    ok(json!({
        "Plaintext": B64.encode(plaintext.as_slice()),
        "KeyId": key.arn,
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}
