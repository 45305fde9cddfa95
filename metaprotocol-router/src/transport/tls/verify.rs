//! Verifying an upstream's certificate by the names it must carry (a SPIFFE id) instead of
//! the host name: mesh workload certificates name a workload (`spiffe://td/ns/a/sa/b`), not a
//! host, so the usual host name check cannot pass. The chain is verified as usual.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::identity::subject_alt_names;

/// Accepts server certificates that chain to `roots` and carry one of `names` as a URI or DNS
/// SAN.
#[derive(Debug)]
pub(crate) struct SubjectAltNameVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl SubjectAltNameVerifier {
    pub fn new(roots: RootCertStore, names: Vec<String>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            roots: Arc::new(roots),
            names,
            provider,
        }
    }

    /// True if the DER certificate carries one of the expected names.
    fn names_match(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        subject_alt_names(&cert).any(|name| match name {
            GeneralName::URI(name) | GeneralName::DNSName(name) => {
                self.names.iter().any(|want| want == name)
            }
            _ => false,
        })
    }
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.names_match(end_entity) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
