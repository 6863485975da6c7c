//! Azure Key Vault URIs and key names, checked without any SDK (so key configurations can be
//! validated in builds without the `azure` feature).

use crate::error::{Error, ErrorKind, Result};

/// Checks a vault URI: `https://<vault host>` with no path (a trailing `/` is fine).
///
/// # Errors
/// [`ErrorKind::Validation`] with a message starting `vault_uri: `.
pub fn check_vault_uri(uri: &str) -> Result<()> {
    let invalid = |m: &str| {
        Err(Error::new(
            ErrorKind::Validation,
            format!("vault_uri: {uri:?} {m}"),
        ))
    };
    let Some(rest) = uri.strip_prefix("https://") else {
        return invalid("must start with https://");
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return invalid("must be https://<vault host> with no path");
    }
    Ok(())
}

/// Checks a key name: 1 to 127 letters, digits and dashes.
///
/// # Errors
/// [`ErrorKind::Validation`] with a message starting `key_name: `.
pub fn check_key_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 127
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::new(
            ErrorKind::Validation,
            format!("key_name: {name:?} must be 1 to 127 letters, digits and dashes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_names() {
        check_vault_uri("https://contoso.vault.azure.net/").unwrap();
        check_vault_uri("https://127.0.0.1:8443").unwrap();
        for bad in [
            "http://contoso.vault.azure.net",
            "https://",
            "https://v.vault.azure.net/keys/x",
        ] {
            assert!(
                check_vault_uri(bad)
                    .unwrap_err()
                    .message()
                    .starts_with("vault_uri: "),
                "{bad}"
            );
        }
        check_key_name("tenant-kek-1").unwrap();
        assert!(check_key_name("bad name").is_err());
        assert!(check_key_name("").is_err());
    }
}
