//! A minimal STS `AssumeRole` (awsQuery protocol, XML answer) for the AWS fake.

use hyper::StatusCode;

use super::{AssumedRole, State, now_secs};
use crate::testkit::http::{Reply, Request, form_pairs, rfc3339};

fn xml_error(code: &str, message: &str) -> Reply {
    Reply::new(
        StatusCode::BAD_REQUEST,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake</RequestId></ErrorResponse>"
        ),
    )
}

fn random_token(prefix: &str, len: usize) -> String {
    let mut b = vec![0u8; len];
    let _ = getrandom::fill(&mut b);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = prefix.to_owned();
    s.extend(b.iter().map(|x| alphabet[usize::from(x % 32)] as char));
    s
}

pub(super) fn handle(state: &mut State, req: &Request) -> Reply {
    let pairs = form_pairs(&req.body);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if get("Action").as_deref() != Some("AssumeRole") {
        return xml_error("InvalidAction", "the fake answers AssumeRole only");
    }
    let (Some(role_arn), Some(session_name)) = (get("RoleArn"), get("RoleSessionName")) else {
        return xml_error(
            "ValidationError",
            "RoleArn and RoleSessionName are required",
        );
    };
    if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
        return xml_error("ValidationError", "RoleArn is not a role ARN");
    }
    let access_key_id = random_token("ASIA", 16);
    let duration = state.session_duration.map_or(3600, |d| d.as_secs().max(1));
    let expiry = now_secs() + duration;
    state.sessions.insert(access_key_id.clone(), expiry);
    state.assumed.push(AssumedRole {
        role_arn: role_arn.clone(),
        session_name: session_name.clone(),
        external_id: get("ExternalId"),
        access_key_id: access_key_id.clone(),
    });
    let account = role_arn.split(':').nth(4).unwrap_or("000000000000");
    let role_name = role_arn.rsplit('/').next().unwrap_or("role");
    Reply::new(
        StatusCode::OK,
        "text/xml",
        format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
             <Credentials><AccessKeyId>{access_key_id}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROAFAKE:{session_name}</AssumedRoleId>\
             <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}</Arn></AssumedRoleUser>\
             </AssumeRoleResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></AssumeRoleResponse>",
            random_token("", 40),
            random_token("FQoGZXIvYXdzE", 100),
            rfc3339(expiry),
        ),
    )
}
