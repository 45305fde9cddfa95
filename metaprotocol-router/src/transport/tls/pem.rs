//! Reading PEM files into what rustls takes: certificate chains, private keys, trust roots.

use std::path::{Path, PathBuf};

use metaprotocol_core::read_regular_file;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::ConfigError;

/// The most bytes a certificate, key or CA file may hold: sixteen times the largest real PEM
/// bundles (Mozilla's CA bundle, about 220 KiB), far below what would strain memory.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// A PEM file read whole, with the config field that names it (errors name both).
pub(crate) struct PemFile {
    field: &'static str,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl PemFile {
    /// Reads `path`, the value of config field `field`: a regular file (after symlinks) of at
    /// most [`MAX_FILE_BYTES`]. Anything else is refused without waiting or reading it whole:
    /// opening a FIFO waits for a writer, and a device (`/dev/zero`) never ends.
    pub fn read(field: &'static str, path: &Path) -> Result<Self, ConfigError> {
        let bytes = read_regular_file(path, MAX_FILE_BYTES).map_err(|why| {
            ConfigError::new(field, format!("cannot read {}: {why}", path.display()))
        })?;
        Ok(Self {
            field,
            path: path.to_owned(),
            bytes,
        })
    }

    /// The config field that names the file.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Where the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file's certificates, in file order; at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.unreadable(err))?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                self.field,
                format!("{} holds no PEM certificate", self.path.display()),
            ));
        }
        Ok(certs)
    }

    /// The file's private key.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, ConfigError> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|err| self.unreadable(err))
    }

    /// The file's certificates as trust roots. As Envoy loads a CA bundle (BoringSSL's
    /// `PEM_X509_INFO_read_bio`), a block that is no X.509 certificate refuses the file, while
    /// one that is but cannot be a trust anchor here (an extension rustls reads and finds
    /// malformed, which BoringSSL reads only when it uses it) is left out with a warning naming
    /// it: one odd certificate in a system or corporate bundle does not refuse the others. A
    /// file with no certificate that can be an anchor is refused.
    pub fn roots(&self) -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        let mut left_out = Vec::new();
        for (index, cert) in self.certificates()?.into_iter().enumerate() {
            // Counted from 1, as a reader counts the file's blocks.
            let number = index + 1;
            // Only a certificate webpki refuses is parsed again, to tell a block that is no
            // X.509 certificate (refusing the file, as BoringSSL does) from one it can read but
            // not trust (left out): a stricter parser never refuses what webpki takes.
            let Err(err) = roots.add(CertificateDer::from(cert.as_ref())) else {
                continue;
            };
            if x509_parser::parse_x509_certificate(&cert).is_err() {
                return Err(ConfigError::new(
                    self.field,
                    format!(
                        "{}: certificate {number} is not an X.509 certificate",
                        self.path.display()
                    ),
                ));
            }
            left_out.push(format!("certificate {number}: {err}"));
        }
        if roots.is_empty() {
            return Err(ConfigError::new(
                self.field,
                format!(
                    "{} holds no certificate that can be a trust anchor ({})",
                    self.path.display(),
                    left_out.join("; ")
                ),
            ));
        }
        if !left_out.is_empty() {
            tracing::warn!(
                field = self.field,
                file = %self.path.display(),
                left_out = %left_out.join("; "),
                "CA certificates that cannot be trust anchors are left out; the file's others are trusted"
            );
        }
        Ok(roots)
    }

    /// The file's certificate revocation lists; at least one.
    pub fn revocation_lists(
        &self,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
        let crls = CertificateRevocationListDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.unreadable(err))?;
        if crls.is_empty() {
            return Err(ConfigError::new(
                self.field,
                format!(
                    "{} holds no PEM certificate revocation list",
                    self.path.display()
                ),
            ));
        }
        Ok(crls)
    }

    fn unreadable(&self, err: rustls_pki_types::pem::Error) -> ConfigError {
        ConfigError::new(
            self.field,
            format!("cannot read {}: {err}", self.path.display()),
        )
    }
}
