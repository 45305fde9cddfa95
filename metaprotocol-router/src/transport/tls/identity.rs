//! A TLS peer's identity, read from its verified leaf certificate: every URI SAN (SPIFFE ids),
//! every DNS SAN, and the subject as an RFC 4514 string.

use metaprotocol_core::PeerIdentity;
use x509_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

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
            match attribute_text(attr) {
                Some(text) => escape_into(&mut out, &text),
                None => hex_into(&mut out, attr.attr_value()),
            }
        }
    }
    out
}

/// The text of a subject attribute's value, whichever of X.500's string types holds it (BMP
/// strings are UTF-16, universal strings UTF-32, both big-endian; teletex strings are taken as
/// Latin-1, as most software writes them); `None` for a value that is not a string.
fn attribute_text(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    if let Ok(text) = attr.as_str() {
        return Some(text.to_owned());
    }
    let value = attr.attr_value();
    if value.class() != Class::Universal {
        return None;
    }
    let data = value.data;
    match value.tag() {
        Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if data.len() % 2 == 0 => char::decode_utf16(
            data.chunks_exact(2)
                .map(|unit| u16::from_be_bytes([unit[0], unit[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|unit| char::from_u32(u32::from_be_bytes([unit[0], unit[1], unit[2], unit[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends a value that is not text as RFC 4514 writes it: `#` and the hex of its DER encoding
/// (never confused with text, whose leading `#` is escaped).
fn hex_into(out: &mut String, value: &Any<'_>) {
    use std::fmt::Write;

    out.push('#');
    let tag = value.tag().0;
    let len = value.data.len();
    let mut header = Vec::with_capacity(10);
    // Tags of 31 and more take more bytes; no subject has them, and the value stays apart from
    // text without its header.
    if tag < 31 {
        let class = (value.class() as u8) << 6;
        let constructed = if value.header.is_constructed() {
            0x20
        } else {
            0
        };
        header.push(class | constructed | tag as u8);
        if len < 0x80 {
            header.push(len as u8);
        } else {
            let bytes = (len as u64).to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            header.push(0x80 | (bytes.len() - skip) as u8);
            header.extend_from_slice(&bytes[skip..]);
        }
    }
    for byte in header.iter().chain(value.data) {
        let _ = write!(out, "{byte:02X}");
    }
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
    fn subject_values_of_every_string_type_are_read_and_others_written_in_hex()
    -> Result<(), Box<dyn std::error::Error>> {
        use rcgen::DnValue;
        use rcgen::string::BmpString;
        use x509_parser::asn1_rs::FromDer;

        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(
            DnType::OrganizationName,
            DnValue::BmpString(BmpString::try_from("ex\u{e4}mple")?),
        );
        subject.push(
            DnType::CommonName,
            DnValue::BmpString(BmpString::try_from("reader")?),
        );
        params.distinguished_name = subject;
        let cert = params.self_signed(&KeyPair::generate()?)?;
        let identity = peer_identity(cert.der()).ok_or("not parsed")?;
        assert_eq!(
            identity.subject.as_deref(),
            Some("CN=reader,O=ex\u{e4}mple")
        );

        // A value that is not text is written in hex, apart from any text.
        let mut out = String::new();
        let (_, any) = Any::from_der(&[0x04, 0x02, 0xAB, 0xCD]).map_err(|err| err.to_string())?;
        hex_into(&mut out, &any);
        assert_eq!(out, "#0402ABCD");
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
