//! The REST surface of the Key Vault fake.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{AzureFault, State, VaultKey, lock, now_secs};
use crate::testkit::http::{Reply, Request};

fn error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Reply {
    let mut body = json!({ "error": { "code": code, "message": message } });
    if let Some(inner) = inner {
        body["error"]["innererror"] = json!({ "code": inner });
    }
    Reply::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json; charset=utf-8",
        body.to_string(),
    )
    .with_header("x-ms-request-id", &super::new_version_id())
}

fn ok(body: Value) -> Reply {
    Reply::new(
        StatusCode::OK,
        "application/json; charset=utf-8",
        body.to_string(),
    )
    .with_header("x-ms-request-id", &super::new_version_id())
}

/// The vault's answer to a request it cannot serve now (500).
pub(super) fn server_error(message: &str) -> Reply {
    error(500, "InternalServerError", message, None)
}

pub(super) async fn handle(state: &std::sync::Mutex<State>, tenant: &str, req: Request) -> Reply {
    let Some(token) = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned)
    else {
        lock(state).challenges += 1;
        return Reply::new(StatusCode::UNAUTHORIZED, "application/json", "")
            .with_header(
                "www-authenticate",
                &format!(
                    "Bearer authorization=\"https://login.microsoftonline.com/{tenant}\", resource=\"https://vault.azure.net\""
                ),
            );
    };
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let (name, version, op) = match (&req.method, segments.as_slice()) {
        (&Method::GET, ["keys", name]) | (&Method::GET, ["keys", name, ""]) => (*name, "", "get"),
        (&Method::GET, ["keys", name, version]) => (*name, *version, "get"),
        (&Method::POST, ["keys", name, version, op @ ("wrapkey" | "unwrapkey")]) => {
            (*name, *version, *op)
        }
        _ => {
            return error(
                400,
                "BadParameter",
                &format!("the fake does not serve {} {}", req.method, req.path),
                None,
            );
        }
    };
    let (latency, fault) = {
        let mut s = lock(state);
        s.tokens.push(token);
        s.calls.push(op.to_owned());
        (s.latency, s.faults.pop_front())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(AzureFault::Delay(d)) => tokio::time::sleep(d).await,
        Some(AzureFault::Throttle) => {
            return error(
                429,
                "Throttled",
                "Request was not processed because too many requests were received.",
                None,
            )
            .with_header("retry-after", "0");
        }
        Some(AzureFault::ServerError) => {
            return error(500, "InternalServerError", "injected server error", None);
        }
        Some(AzureFault::Unavailable) => {
            return error(503, "ServiceUnavailable", "injected unavailability", None);
        }
        Some(AzureFault::Forbidden) => {
            return error(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource. (no role assignment)",
                Some("ForbiddenByRbac"),
            );
        }
        Some(AzureFault::DropConnection) => return Reply::Drop,
        None => {}
    }
    let s = lock(state);
    let Some(key) = s.keys.get(name) else {
        return error(
            404,
            "KeyNotFound",
            &format!("A key with (name/id) {name} was not found in this key vault."),
            None,
        );
    };
    if key.denied {
        return error(
            403,
            "Forbidden",
            "Caller is not authorized to perform action on resource. (role assignment removed)",
            Some("ForbiddenByRbac"),
        );
    }
    let version = if version.is_empty() {
        key.current.as_str()
    } else {
        version
    };
    if !key.versions.contains_key(version) {
        return error(
            404,
            "KeyNotFound",
            &format!("A key with (name/id) {name}/{version} was not found in this key vault."),
            None,
        );
    }
    let host = req.header("host").unwrap_or("127.0.0.1");
    let kid = format!("https://{host}/keys/{name}/{version}");
    match op {
        "get" => get(key, version, &kid),
        _ => key_operation(key, version, op, &kid, &req.body),
    }
}

fn get(key: &VaultKey, version: &str, kid: &str) -> Reply {
    let v = &key.versions[version];
    let mut attributes = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.created,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(exp) = v.expires {
        attributes["exp"] = json!(exp);
    }
    if let Some(nbf) = v.not_before {
        attributes["nbf"] = json!(nbf);
    }
    ok(json!({
        "key": {
            "kid": kid,
            "kty": key.kty,
            "key_ops": key.ops,
            "n": B64URL.encode(&v.n),
            "e": B64URL.encode(&v.e),
        },
        "attributes": attributes,
    }))
}

fn key_operation(key: &VaultKey, version: &str, op: &str, kid: &str, body: &[u8]) -> Reply {
    let v = &key.versions[version];
    let op_name = if op == "wrapkey" {
        "wrapKey"
    } else {
        "unwrapKey"
    };
    if !key.ops.iter().any(|o| o == op_name) {
        return error(
            403,
            "Forbidden",
            &format!("Operation {op_name} is not permitted on this key."),
            Some("KeyOperationForbidden"),
        );
    }
    if !v.enabled {
        return error(
            403,
            "Forbidden",
            &format!("Operation {op_name} is not allowed on a disabled key."),
            Some("KeyDisabled"),
        );
    }
    let now = now_secs();
    if v.expires.is_some_and(|exp| exp <= now) {
        return error(
            403,
            "Forbidden",
            &format!("Operation {op_name} is not allowed on an expired key."),
            Some("KeyExpired"),
        );
    }
    if v.not_before.is_some_and(|nbf| nbf > now) {
        return error(
            403,
            "Forbidden",
            &format!("Operation {op_name} is not allowed on a key that is not yet valid."),
            Some("KeyNotYetValid"),
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(400, "BadParameter", "The request body is not JSON.", None);
    };
    if request.get("alg").and_then(Value::as_str) != Some("RSA-OAEP-256") {
        return error(
            400,
            "BadParameter",
            "The fake supports alg RSA-OAEP-256 only.",
            None,
        );
    }
    let Some(value) = request
        .get("value")
        .and_then(Value::as_str)
        .and_then(|v| B64URL.decode(v.trim_end_matches('=')).ok())
    else {
        return error(
            400,
            "BadParameter",
            "value is missing or not base64url.",
            None,
        );
    };
    let result = if op == "unwrapkey" {
        match v.private.decrypt(&value, None) {
            Ok(plaintext) => B64URL.encode(plaintext.as_slice()),
            Err(_) => return error(400, "BadParameter", "The parameter is incorrect.", None),
        }
    } else {
        match crate::kms::rsa_oaep::OaepPublicKey::from_components(&v.n, &v.e)
            .and_then(|k| k.encrypt(&value))
        {
            Ok(ct) => B64URL.encode(ct),
            Err(_) => return error(400, "BadParameter", "The parameter is incorrect.", None),
        }
    };
    ok(json!({ "kid": kid, "value": result }))
}
