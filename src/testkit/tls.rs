//! A certificate authority made at test time, and a server certificate it signs for
//! `127.0.0.1` and `localhost`: HTTPS fakes for clients that refuse plain http.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// A fresh CA and a server configuration presenting a certificate it signed.
pub struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::configuration(format!("test certificate: {e}"))
}

impl TestCa {
    /// Makes the CA, the server key and certificate.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn new() -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cmek testkit CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(tls_error)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(tls_error)?;
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(tls_error)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server_cert = server.signed_by(&server_key, &issuer).map_err(tls_error)?;

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .map_err(tls_error)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(config),
        })
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}
