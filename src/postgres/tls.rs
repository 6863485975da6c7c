//! TLS to the server through rustls. `sslmode=require`, `verify-ca` or `verify-full` in a
//! `postgres://` URL turns it on, and every one of them verifies the server's certificate chain and its
//! name (stricter than libpq's `require`, which checks neither); `sslrootcert=<PEM file>`
//! names the certificate authorities to trust instead of the system's. Without them the
//! connection is plain TCP (`sslmode=disable` or `prefer`, the default): for a private network
//! or a local socket.

use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// How connections to the server are made.
#[derive(Clone)]
pub(super) enum Tls {
    /// Plain TCP.
    Plain,
    /// TLS, the server verified against these roots.
    Rustls(MakeRustlsConnect),
}

/// The options cmek reads itself, taken out of the URL before tokio-postgres parses it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    /// `sslmode` was `verify-ca` or `verify-full` (tokio-postgres knows only `require`).
    verify: bool,
    /// `sslrootcert`.
    root_cert: Option<String>,
}

/// Parses `url` (URL or key-value form) with cmek's TLS options.
pub(super) fn configure(url: &str) -> Result<(tokio_postgres::Config, Tls)> {
    let (rest, options) = take_options(url);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| Error::invalid_input(format!("not a PostgreSQL URL: {e}")))?;
    if !options.verify && config.get_ssl_mode() != SslMode::Require {
        if options.root_cert.is_some() {
            return Err(Error::invalid_input(
                "sslrootcert needs sslmode=require (or verify-ca, verify-full)",
            ));
        }
        return Ok((config, Tls::Plain));
    }
    config.ssl_mode(SslMode::Require);
    // `sslrootcert=system` (as libpq spells it) is the system's authorities, the default.
    let roots = match options.root_cert.as_deref() {
        Some(path) if path != "system" => roots_from(path)?,
        _ => system_roots()?,
    };
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::configuration(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((config, Tls::Rustls(MakeRustlsConnect::new(client))))
}

/// Splits `sslrootcert` off a `postgres://` URL's query and turns `verify-ca`/`verify-full`
/// into `require`. The key-value form (`host=… dbname=…`) is passed on as it is: there
/// tokio-postgres refuses these options, so TLS with them needs the URL form.
fn take_options(url: &str) -> (String, TlsOptions) {
    let mut options = TlsOptions::default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return (url.to_owned(), options);
    }
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), options);
    };
    let kept: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('=') {
            Some(("sslrootcert", path)) => {
                options.root_cert = Some(percent_decoded(path));
                None
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                options.verify = true;
                Some("sslmode=require".to_owned())
            }
            _ => Some(p.to_owned()),
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, options)
}

/// `%2F` and the like decoded (a path in a URL's query).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn roots_from(path: &str) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::configuration(format!("sslrootcert {path}: {e}")))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|e| Error::configuration(format!("sslrootcert {path}: {e}")))?;
        roots
            .add(certificate)
            .map_err(|e| Error::configuration(format!("sslrootcert {path}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::configuration(format!(
            "sslrootcert {path} holds no certificate"
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::configuration(
            "TLS: no trusted certificate authorities on this system; give sslrootcert",
        ));
    }
    Ok(roots)
}

/// What TLS said when it refused the server on the failed connection `e` (an unknown
/// authority, another name), if it did: a setup to fix, not an outage to retry.
pub(super) fn refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, options) = take_options(
            "postgres://u:p@db:5432/cmek?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db:5432/cmek?sslmode=require&application_name=x"
        );
        assert_eq!(
            options,
            TlsOptions {
                verify: true,
                root_cert: Some("/etc/ca.pem".to_owned())
            }
        );
        // The key-value form is left to tokio-postgres, which refuses these options.
        let kv = "host=db password='a  b' sslmode=verify-ca";
        assert_eq!(take_options(kv), (kv.to_owned(), TlsOptions::default()));
        assert!(configure(kv).is_err());
        let (rest, _) = take_options("postgres://db/cmek?flag&sslmode=disable");
        assert_eq!(rest, "postgres://db/cmek?flag&sslmode=disable");
        let (rest, options) = take_options("postgres://db/cmek?sslrootcert=/ca.pem");
        assert_eq!(rest, "postgres://db/cmek");
        assert_eq!(options.root_cert.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn plain_unless_asked_and_roots_need_tls() {
        assert!(matches!(
            configure("postgres://db/cmek"),
            Ok((_, Tls::Plain))
        ));
        assert!(matches!(
            configure("postgres://db/cmek?sslmode=disable"),
            Ok((_, Tls::Plain))
        ));
        let err = configure("postgres://db/cmek?sslrootcert=/ca.pem")
            .err()
            .expect("refused");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        let err = configure("postgres://db/cmek?sslmode=require&sslrootcert=/no/such/file")
            .err()
            .expect("refused");
        assert_eq!(err.kind(), crate::ErrorKind::Configuration);
    }
}
