//! A service mesh's certificates as Istio issues them, made with rcgen: a mesh CA
//! (`O=cluster.local`) and workload certificates whose subject is empty and whose name is a
//! SPIFFE id URI SAN (`spiffe://cluster.local/ns/<ns>/sa/<sa>`), good for server and client
//! authentication, written as PEM files.

use std::fs;
use std::path::PathBuf;

use metaprotocol_router::config::{ClusterTlsSpec, ListenerTlsSpec};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::TestResult;
use super::process::Scratch;

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The SPIFFE id of service account `sa` in namespace `ns`.
pub fn spiffe_id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// The mesh's certificate authority, its certificate written to `ca.pem`.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's file.
    pub ca_file: PathBuf,
}

/// A workload's certificate and key files.
pub struct Workload {
    /// Its SPIFFE id (its URI SAN).
    pub spiffe_id: String,
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM).
    pub key_file: PathBuf,
}

impl MeshCa {
    /// A new CA (named `name` in file names) in `scratch`.
    pub fn new(scratch: &Scratch, name: &str) -> TestResult<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, TRUST_DOMAIN);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let ca_file = scratch.path(&format!("{name}-ca.pem"));
        fs::write(&ca_file, cert.pem())?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_file,
        })
    }

    /// The certificate of service account `sa` in namespace `ns` (plus DNS SANs `dns`), written
    /// to `<file>.pem` and `<file>-key.pem` in `scratch`.
    pub fn workload(
        &self,
        scratch: &Scratch,
        file: &str,
        ns: &str,
        sa: &str,
        dns: &[&str],
    ) -> TestResult<Workload> {
        self.certificate(scratch, file, &spiffe_id(ns, sa), dns)
    }

    /// A workload certificate whose URI SAN is `uri` (a SPIFFE id, or any other URI a CA may
    /// issue), plus DNS SANs `dns`, written as [`MeshCa::workload`] writes it.
    pub fn certificate(
        &self,
        scratch: &Scratch,
        file: &str,
        uri: &str,
        dns: &[&str],
    ) -> TestResult<Workload> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let spiffe_id = uri.to_owned();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.as_str().try_into()?));
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into()?));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let workload = Workload {
            spiffe_id,
            cert_file: scratch.path(&format!("{file}.pem")),
            key_file: scratch.path(&format!("{file}-key.pem")),
        };
        fs::write(&workload.cert_file, cert.pem())?;
        fs::write(&workload.key_file, key.serialize_pem())?;
        Ok(workload)
    }

    /// A listener's `tls` serving `workload`, requiring client certificates of this mesh.
    pub fn listener_tls(&self, workload: &Workload) -> ListenerTlsSpec {
        ListenerTlsSpec {
            cert_file: workload.cert_file.clone(),
            key_file: workload.key_file.clone(),
            client_ca_file: Some(self.ca_file.clone()),
            require_client_cert: true,
            crl_files: Vec::new(),
        }
    }

    /// A client's (or cluster's) `tls` presenting `workload` (none: no client certificate)
    /// to a server of this mesh that must be `server` (a SPIFFE id).
    pub fn client_tls(&self, workload: Option<&Workload>, server: &str) -> ClusterTlsSpec {
        ClusterTlsSpec {
            ca_file: self.ca_file.clone(),
            cert_file: workload.map(|w| w.cert_file.clone()),
            key_file: workload.map(|w| w.key_file.clone()),
            server_name: None,
            subject_alt_names: vec![server.to_owned()],
            crl_files: Vec::new(),
            alpn_protocols: Vec::new(),
        }
    }
}

/// `spec` as YAML flow mapping, for a config file.
pub fn yaml<T: serde::Serialize>(spec: &T) -> TestResult<String> {
    Ok(serde_json::to_string(spec)?)
}
