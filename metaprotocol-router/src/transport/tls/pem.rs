//! Reading PEM files into what rustls takes: certificate chains, private keys, trust roots.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

/// The certificates of `path` (config field `field`), in file order; at least one.
pub(crate) fn certificates(
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| unreadable(field, path, err))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The private key of `path` (config field `field`).
pub(crate) fn private_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| unreadable(field, path, err))
}

/// The certificates of `path` as trust roots.
pub(crate) fn roots(field: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(field, path)? {
        roots
            .add(cert)
            .map_err(|err| ConfigError::new(field, format!("{}: {err}", path.display())))?;
    }
    Ok(roots)
}

fn unreadable(field: &str, path: &Path, err: rustls_pki_types::pem::Error) -> ConfigError {
    ConfigError::new(field, format!("cannot read {}: {err}", path.display()))
}
