//! A TLS peer's identity, read from its verified leaf certificate: every URI SAN (SPIFFE ids),
//! every DNS SAN, and the subject as an RFC 4514 string.

use metaprotocol_core::PeerIdentity;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::x509::X509Name;

/// The identity in the DER certificate `der`; `None` if it cannot be read whole: the
/// certificate, or its subject alternative names, do not parse (rustls verifies a client
/// certificate's chain without reading its SANs, so a certificate it accepted can still have
/// names that cannot be read; such a client must not pass for one without names).
pub(crate) fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut identity = PeerIdentity::default();
    for name in subject_alt_names(&cert)? {
        match name {
            GeneralName::URI(uri) => identity.uri_sans.push((*uri).to_owned()),
            GeneralName::DNSName(dns) => identity.dns_sans.push((*dns).to_owned()),
            _ => {}
        }
    }
    let subject = rfc4514(cert.subject());
    identity.subject = (!subject.is_empty()).then_some(subject);
    Some(identity)
}

/// The certificate's subject alternative names (none when it has no such extension); `None`
/// if the extension cannot be read (it does not parse, or it is there twice).
pub(crate) fn subject_alt_names<'a>(
    cert: &'a X509Certificate<'_>,
) -> Option<&'a [GeneralName<'a>]> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => Some(&san.value.general_names),
        Ok(None) => Some(&[]),
        Err(_) => None,
    }
}

/// `name` as RFC 4514 writes it: the most specific part first (`CN=reader,O=example`).
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for rdn in name.iter_rdn().collect::<Vec<_>>().into_iter().rev() {
        for (i, attr) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push(if i == 0 { ',' } else { '+' });
            }
            match oid2abbrev(attr.attr_type(), oid_registry()) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            escape_into(&mut out, attr.as_str().unwrap_or_default());
        }
    }
    out
}

/// Appends `value` escaped as RFC 4514 requires.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;

    #[test]
    fn every_san_and_the_subject_are_read() -> Result<(), Box<dyn std::error::Error>> {
        let mut params = CertificateParams::new(vec!["reader.default.svc".to_owned()])?;
        params.subject_alt_names.push(SanType::URI(
            "spiffe://cluster.local/ns/default/sa/reader".try_into()?,
        ));
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "example");
        subject.push(DnType::CommonName, "reader, the first");
        params.distinguished_name = subject;
        let cert = params.self_signed(&KeyPair::generate()?)?;
        let identity = peer_identity(cert.der()).ok_or("not parsed")?;
        assert_eq!(
            identity.uri_sans,
            ["spiffe://cluster.local/ns/default/sa/reader"]
        );
        assert_eq!(identity.dns_sans, ["reader.default.svc"]);
        assert_eq!(
            identity.subject.as_deref(),
            Some("CN=reader\\, the first,O=example")
        );
        Ok(())
    }

    #[test]
    fn an_empty_subject_is_none() -> Result<(), Box<dyn std::error::Error>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into()?));
        let cert = params.self_signed(&KeyPair::generate()?)?;
        let identity = peer_identity(cert.der()).ok_or("not parsed")?;
        assert_eq!(identity.subject, None);
        assert_eq!(
            identity.spiffe_id(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        Ok(())
    }
}
