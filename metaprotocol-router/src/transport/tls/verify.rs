//! Verifying an upstream's certificate by the names it must carry (a SPIFFE id) instead of
//! the host name: mesh workload certificates name a workload (`spiffe://td/ns/a/sa/b`), not a
//! host, so the usual host name check cannot pass. The chain is verified as usual.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::identity::subject_alt_names;

/// Accepts server certificates that chain to `roots` and carry one of the expected names: a
/// name with a scheme (`spiffe://td/ns/a/sa/b`, any name with a `:`, which no DNS name has) as a
/// URI SAN, exactly; any other as a DNS SAN, ignoring ASCII case as DNS does. A name is never
/// taken from a SAN of the other type: a DNS SAN that spells a SPIFFE id names no workload.
/// With revocation lists, a certificate they revoke is refused too.
#[derive(Debug)]
pub(crate) struct SubjectAltNameVerifier {
    roots: Arc<RootCertStore>,
    /// The verifier of the same roots with the cluster's revocation lists, when it has some.
    revocation: Option<Arc<WebPkiServerVerifier>>,
    /// The expected URI SANs.
    uris: Vec<String>,
    /// The expected DNS SANs.
    dns_names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl SubjectAltNameVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        revocation: Option<Arc<WebPkiServerVerifier>>,
        names: Vec<String>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let (uris, dns_names) = names.into_iter().partition(|name| is_uri(name));
        Self {
            roots,
            revocation,
            uris,
            dns_names,
            provider,
        }
    }

    /// True if the DER certificate carries one of the expected names.
    fn names_match(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        let Some(names) = subject_alt_names(&cert) else {
            return false;
        };
        names.iter().any(|name| match name {
            GeneralName::URI(uri) => self.uris.iter().any(|want| want == uri),
            GeneralName::DNSName(dns) => self
                .dns_names
                .iter()
                .any(|want| dns_name_matches(dns, want)),
            _ => false,
        })
    }
}

/// True if the DNS SAN `presented` names `wanted`, ignoring ASCII case: the same name, or a
/// wildcard in the whole of its first label that stands for `wanted`'s first label (RFC 6125:
/// `*.default.svc` names `provider.default.svc`, not `a.provider.default.svc` nor
/// `default.svc`). As browsers and rustls's own host name check do, a wildcard needs two labels
/// after it (`*.svc` names nothing), and one inside a label (`f*.default.svc`) names nothing but
/// itself. A wanted name that is itself a wildcard matches only that wildcard, spelled alike: a
/// certificate pinned by its wildcard name.
fn dns_name_matches(presented: &str, wanted: &str) -> bool {
    if presented.eq_ignore_ascii_case(wanted) {
        return true;
    }
    let Some(parent) = presented.strip_prefix("*.") else {
        return false;
    };
    let mut labels_after = parent.split('.');
    if labels_after.clone().count() < 2 || labels_after.any(str::is_empty) {
        return false;
    }
    // `wanted` is its first label, a dot, then `parent`.
    let Some(split) = wanted.len().checked_sub(parent.len() + 1) else {
        return false;
    };
    match (wanted.get(..split), wanted.get(split..)) {
        (Some(first), Some(rest)) => {
            !first.is_empty()
                && !first.contains(['.', '*'])
                && rest
                    .strip_prefix('.')
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(parent))
        }
        _ => false,
    }
}

/// True if `name` is to be found among URI SANs rather than DNS SANs: it has a scheme.
fn is_uri(name: &str) -> bool {
    name.contains(':')
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
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
        if let Some(revocation) = &self.revocation {
            // rustls checks revocation only in its own verifier, which verifies the chain again
            // (with the lists) and then the server name; a mesh certificate need not carry that
            // name (its names are checked below), so only that failure is let pass. The chain
            // was verified above whatever this verifier does.
            match revocation.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_)
                | Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(err) => return Err(err),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::dns_name_matches;

    #[test]
    fn a_wildcard_stands_for_one_whole_first_label() {
        let cases = [
            ("provider.default.svc", "provider.default.svc", true),
            ("Provider.Default.SVC", "provider.default.svc", true),
            ("*.default.svc", "provider.default.svc", true),
            ("*.Default.svc", "PROVIDER.default.SVC", true),
            ("*.default.svc", "a.provider.default.svc", false),
            ("*.default.svc", "default.svc", false),
            ("*.default.svc", ".default.svc", false),
            ("*.default.svc", "provider.default.svc.", false),
            ("*.default.svc", "providerdefault.svc", false),
            ("*.default.svc", "*.default.svc", true),
            ("*.default.svc", "*.*.default.svc", false),
            ("*.svc", "default.svc", false),
            ("*.default..svc", "a.default..svc", false),
            ("f*.default.svc", "foo.default.svc", false),
            ("*", "provider", false),
            ("provider.default.svc", "*.default.svc", false),
        ];
        for (presented, wanted, matches) in cases {
            assert_eq!(
                dns_name_matches(presented, wanted),
                matches,
                "{presented} for {wanted}"
            );
        }
    }
}
