//! Reading PEM files into what rustls takes: certificate chains, private keys, trust roots.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

/// A PEM file read whole, with the config field that names it (errors name both).
pub(crate) struct PemFile {
    field: &'static str,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl PemFile {
    /// Reads `path`, the value of config field `field`.
    pub fn read(field: &'static str, path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|err| {
            ConfigError::new(field, format!("cannot read {}: {err}", path.display()))
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

    /// The file's certificates as trust roots.
    pub fn roots(&self) -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots.add(cert).map_err(|err| {
                ConfigError::new(self.field, format!("{}: {err}", self.path.display()))
            })?;
        }
        Ok(roots)
    }

    fn unreadable(&self, err: rustls_pki_types::pem::Error) -> ConfigError {
        ConfigError::new(
            self.field,
            format!("cannot read {}: {err}", self.path.display()),
        )
    }
}
