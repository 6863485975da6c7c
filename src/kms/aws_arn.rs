//! AWS ARNs of KMS keys and IAM roles, parsed and checked without any SDK (so key configurations
//! can be validated in builds without the `aws` feature).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::ids::is_uuid;

fn invalid(field: &str, message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Validation, format!("{field}: {message}"))
}

/// Splits `arn:partition:service:region:account:resource`.
fn split<'a>(field: &str, arn: &'a str) -> Result<[&'a str; 5]> {
    let mut parts = arn.splitn(6, ':');
    let prefix = parts.next();
    let rest: Vec<&str> = parts.collect();
    if prefix != Some("arn") || rest.len() != 5 {
        return Err(invalid(
            field,
            format!("{arn:?} is not an ARN (arn:partition:service:region:account:resource)"),
        ));
    }
    Ok([rest[0], rest[1], rest[2], rest[3], rest[4]])
}

fn check_partition(field: &str, partition: &str) -> Result<()> {
    if matches!(
        partition,
        "aws" | "aws-us-gov" | "aws-cn" | "aws-iso" | "aws-iso-b"
    ) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("unknown AWS partition {partition:?}"),
        ))
    }
}

fn check_account(field: &str, account: &str) -> Result<()> {
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("account {account:?} must be 12 digits"),
        ))
    }
}

/// The ARN of a KMS key: `arn:aws:kms:<region>:<account>:key/<key id>`.
///
/// Alias ARNs are rejected (an alias can be repointed to another key, so a wrapped DEK could
/// not be pinned to the key that wrapped it), and so are multi-region keys (`mrk-…`), which
/// the CMEK product does not support.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KmsKeyArn {
    arn: String,
    partition_len: usize,
    region: (usize, usize),
    account: (usize, usize),
    key_id: usize,
}

impl KmsKeyArn {
    /// Parses and checks a key ARN.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] with a message naming `kms_arn` and what is wrong.
    pub fn parse(arn: &str) -> Result<Self> {
        const FIELD: &str = "kms_arn";
        let [partition, service, region, account, resource] = split(FIELD, arn)?;
        check_partition(FIELD, partition)?;
        if service != "kms" {
            return Err(invalid(
                FIELD,
                format!("service is {service:?}, not \"kms\""),
            ));
        }
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                FIELD,
                format!("region {region:?} is not an AWS region"),
            ));
        }
        check_account(FIELD, account)?;
        let key_id = match resource.split_once('/') {
            Some(("key", id)) => id,
            Some(("alias", _)) => {
                return Err(invalid(
                    FIELD,
                    "an alias ARN cannot pin the key that wrapped a data key; use the key ARN (…:key/<key id>)",
                ));
            }
            _ => {
                return Err(invalid(
                    FIELD,
                    format!("resource {resource:?} is not key/<key id>"),
                ));
            }
        };
        if key_id.starts_with("mrk-") {
            return Err(invalid(FIELD, "multi-region keys are not supported"));
        }
        if !is_uuid(key_id) {
            return Err(invalid(
                FIELD,
                format!("key id {key_id:?} is not a KMS key id (a UUID)"),
            ));
        }
        let region_start = "arn:".len() + partition.len() + 1 + service.len() + 1;
        let account_start = region_start + region.len() + 1;
        Ok(Self {
            arn: arn.to_owned(),
            partition_len: partition.len(),
            region: (region_start, region_start + region.len()),
            account: (account_start, account_start + account.len()),
            key_id: arn.len() - key_id.len(),
        })
    }

    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The partition (`aws`, `aws-us-gov`, …).
    pub fn partition(&self) -> &str {
        &self.arn[4..4 + self.partition_len]
    }

    /// The region the key lives in.
    pub fn region(&self) -> &str {
        &self.arn[self.region.0..self.region.1]
    }

    /// The 12-digit account that owns the key.
    pub fn account(&self) -> &str {
        &self.arn[self.account.0..self.account.1]
    }

    /// The key id (a UUID).
    pub fn key_id(&self) -> &str {
        &self.arn[self.key_id..]
    }

    /// Whether the key is in a US region (`us-*`, including GovCloud), as the CMEK product requires.
    pub fn is_us_region(&self) -> bool {
        self.region().starts_with("us-")
    }
}

impl fmt::Display for KmsKeyArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

impl FromStr for KmsKeyArn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// The ARN of an IAM role: `arn:aws:iam::<account>:role/<path/name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleArn {
    arn: String,
}

impl RoleArn {
    /// Parses and checks a role ARN.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] with a message naming `role_arn` and what is wrong.
    pub fn parse(arn: &str) -> Result<Self> {
        const FIELD: &str = "role_arn";
        let [partition, service, region, account, resource] = split(FIELD, arn)?;
        check_partition(FIELD, partition)?;
        if service != "iam" {
            return Err(invalid(
                FIELD,
                format!("service is {service:?}, not \"iam\""),
            ));
        }
        if !region.is_empty() {
            return Err(invalid(
                FIELD,
                "IAM ARNs have no region (arn:aws:iam::<account>:role/<name>)",
            ));
        }
        check_account(FIELD, account)?;
        match resource.split_once('/') {
            Some(("role", name)) if !name.is_empty() && name.len() <= 512 => {}
            _ => {
                return Err(invalid(
                    FIELD,
                    format!("resource {resource:?} is not role/<name>"),
                ));
            }
        }
        Ok(Self {
            arn: arn.to_owned(),
        })
    }

    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The account the role belongs to.
    pub fn account(&self) -> &str {
        self.arn.split(':').nth(4).unwrap_or_default()
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222";

    #[test]
    fn parses_the_seed_example() {
        let arn = KmsKeyArn::parse(KEY).unwrap();
        assert_eq!(arn.partition(), "aws");
        assert_eq!(arn.region(), "us-east-1");
        assert_eq!(arn.account(), "111122223333");
        assert_eq!(arn.key_id(), "abcd1234-5678-90ab-cdef-000011112222");
        assert!(arn.is_us_region());
        let role = RoleArn::parse("arn:aws:iam::111122223333:role/anthropic-cmek").unwrap();
        assert_eq!(role.account(), "111122223333");
    }

    #[test]
    fn rejects_with_field_level_messages() {
        let cases = [
            ("not-an-arn", "is not an ARN"),
            ("arn:aws:kms:us-east-1:111122223333:alias/prod", "alias ARN"),
            (
                "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                "multi-region",
            ),
            (
                "arn:aws:s3:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222",
                "not \"kms\"",
            ),
            (
                "arn:aws:kms:us-east-1:1111:key/abcd1234-5678-90ab-cdef-000011112222",
                "12 digits",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:key/nope",
                "not a KMS key id",
            ),
            (
                "arn:moon:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222",
                "partition",
            ),
        ];
        for (arn, expected) in cases {
            let err = KmsKeyArn::parse(arn).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation);
            assert!(err.message().starts_with("kms_arn: "), "{err}");
            assert!(err.message().contains(expected), "{arn}: {err}");
        }
        let err = RoleArn::parse("arn:aws:iam:us-east-1:111122223333:role/x").unwrap_err();
        assert!(err.message().starts_with("role_arn: ") && err.message().contains("no region"));
        assert!(RoleArn::parse("arn:aws:iam::111122223333:user/x").is_err());
    }
}
