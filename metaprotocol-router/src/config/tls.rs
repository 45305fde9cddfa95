//! TLS settings: a listener's (terminating clients' TLS) and a cluster's (originating TLS to
//! its endpoints). Certificate files are PEM; they are re-read when they change on disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// TLS for a listener's clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// The proxy's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; with it, a client that
    /// presents a certificate is verified and its identity is seen by filters and routes. Its
    /// `X509 CRL` blocks are revocation lists, checked with those of `crl_files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (mutual TLS); needs `client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Certificate revocation lists (PEM) of the CAs of `client_ca_file` and of the
    /// intermediates between them and client certificates: a client certificate they revoke is
    /// refused, as is one whose issuer has no list among them. Needs `client_ca_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_files: Vec<PathBuf>,
}

impl ListenerTlsSpec {
    /// The files the settings are built from, each with the field that names it.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, path)| Some((field, path?)))
        .chain(self.crl_files.iter().map(|crl| ("crl_files", crl)))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        not_empty("cert_file", &self.cert_file)?;
        not_empty("key_file", &self.key_file)?;
        if let Some(ca) = &self.client_ca_file {
            not_empty("client_ca_file", ca)?;
        } else if self.require_client_cert {
            return Err(ConfigError::new(
                "require_client_cert",
                "needs `client_ca_file` to verify client certificates with",
            ));
        } else if !self.crl_files.is_empty() {
            return Err(ConfigError::new(
                "crl_files",
                "needs `client_ca_file`: only verified client certificates can be revoked",
            ));
        }
        for (i, crl) in self.crl_files.iter().enumerate() {
            not_empty(&format!("crl_files[{i}]"), crl)?;
        }
        Ok(())
    }
}

/// TLS to a cluster's endpoints, or to the xDS server (`dynamic.xds.tls`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsSpec {
    /// CA certificates (PEM) that endpoints' certificates must chain to. Its `X509 CRL`
    /// blocks are revocation lists, checked with those of `crl_files`.
    pub ca_file: PathBuf,
    /// The proxy's client certificate chain (PEM), for endpoints that require one; with
    /// `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name sent in the handshake (SNI) and, without `subject_alt_names`, required in the
    /// endpoint's certificate; defaults to the endpoint's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Names the endpoint's certificate must carry one of (a SPIFFE id such as
    /// `spiffe://cluster.local/ns/default/sa/provider`); replaces the `server_name` check, for
    /// mesh certificates that name a workload rather than a host. A name with a scheme (a `:`)
    /// must be a URI SAN, exactly; any other a DNS SAN, in any ASCII case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Certificate revocation lists (PEM) of the CAs of `ca_file` and of the intermediates
    /// between them and endpoints' certificates: an endpoint certificate they revoke is refused,
    /// as is one whose issuer has no list among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_files: Vec<PathBuf>,
    /// The application protocols offered in the handshake (ALPN), in order of preference:
    /// Istio's sidecars take a connection for mutual TLS from a peer sidecar only when it offers
    /// `istio-peer-exchange` or `istio`, and pass any other TLS through to the application. The
    /// protocol the endpoint picks is not checked: the proxy speaks the cluster's protocol
    /// whatever it is. Each 1 to 255 bytes, at most [`MAX_ALPN_PROTOCOLS`] of them and
    /// [`MAX_ALPN_LIST_BYTES`] together (see [`ClusterTlsSpec::check_alpn_protocols`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
}

/// The longest protocol name ALPN can carry (RFC 7301: a one-byte length).
const MAX_ALPN_PROTOCOL_BYTES: usize = 255;

/// The most protocols a cluster's `alpn_protocols` may list: every handshake carries them, and
/// every cluster holds them (a control plane sets them for each), while real lists name a few
/// (Istio's sidecars offer two).
pub const MAX_ALPN_PROTOCOLS: usize = 16;

/// The most bytes a cluster's `alpn_protocols` may take as a handshake carries them, each name
/// with its one-byte length: a ClientHello grown past a few KiB splits over packets and is
/// refused by some servers and middleboxes (RFC 7301 itself allows 65535).
pub const MAX_ALPN_LIST_BYTES: usize = 1024;

impl ClusterTlsSpec {
    /// The files the settings are built from, each with the field that names it.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("ca_file", Some(&self.ca_file)),
            ("cert_file", self.cert_file.as_ref()),
            ("key_file", self.key_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, path)| Some((field, path?)))
        .chain(self.crl_files.iter().map(|crl| ("crl_files", crl)))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        not_empty("ca_file", &self.ca_file)?;
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                not_empty("cert_file", cert)?;
                not_empty("key_file", key)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::new("key_file", "needed with `cert_file`"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("cert_file", "needed with `key_file`"));
            }
        }
        if let Some(name) = &self.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(ConfigError::new(
                "server_name",
                format!("`{name}` is not a DNS name or an IP address"),
            ));
        }
        if let Some(i) = self.subject_alt_names.iter().position(String::is_empty) {
            return Err(ConfigError::new(
                format!("subject_alt_names[{i}]"),
                "must not be empty",
            ));
        }
        for (i, crl) in self.crl_files.iter().enumerate() {
            not_empty(&format!("crl_files[{i}]"), crl)?;
        }
        Self::check_alpn_protocols(&self.alpn_protocols)
    }

    /// Checks `protocols` as an `alpn_protocols` list: each 1 to 255 bytes, at most
    /// [`MAX_ALPN_PROTOCOLS`] of them, at most [`MAX_ALPN_LIST_BYTES`] together with their
    /// length bytes. The error's field is `alpn_protocols` or the entry at fault
    /// (`alpn_protocols[2]`); xDS translation refuses an `UpstreamTlsContext` by it.
    pub fn check_alpn_protocols(protocols: &[String]) -> Result<(), ConfigError> {
        for (i, protocol) in protocols.iter().enumerate() {
            if protocol.is_empty() || protocol.len() > MAX_ALPN_PROTOCOL_BYTES {
                return Err(ConfigError::new(
                    format!("alpn_protocols[{i}]"),
                    format!("must be 1 to {MAX_ALPN_PROTOCOL_BYTES} bytes long"),
                ));
            }
        }
        if protocols.len() > MAX_ALPN_PROTOCOLS {
            return Err(ConfigError::new(
                "alpn_protocols",
                format!(
                    "lists {} protocols: at most {MAX_ALPN_PROTOCOLS} protocols are offered",
                    protocols.len()
                ),
            ));
        }
        let bytes: usize = protocols.iter().map(|protocol| protocol.len() + 1).sum();
        if bytes > MAX_ALPN_LIST_BYTES {
            return Err(ConfigError::new(
                "alpn_protocols",
                format!(
                    "takes {bytes} bytes in the handshake (each name and its length byte): at most {MAX_ALPN_LIST_BYTES} bytes are offered"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the settings as those of TLS to a gRPC server (the xDS server, an OTLP
    /// collector): gRPC's protocol is `h2`, which the proxy offers itself, so
    /// `alpn_protocols` is refused rather than ignored.
    pub(crate) fn validate_for_grpc(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if !self.alpn_protocols.is_empty() {
            return Err(ConfigError::new(
                "alpn_protocols",
                "a gRPC server is offered `h2`, the protocol gRPC speaks, and no other",
            ));
        }
        Ok(())
    }
}

fn not_empty(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = "listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: r
    LISTENER_TLS
route_configs:
  - { name: r, routes: [ { route: { cluster: c } } ] }
clusters:
  - name: c
    endpoints: [ { address: 127.0.0.1:1 } ]
    CLUSTER_TLS
";

    fn error_of(listener: &str, cluster: &str) -> ConfigError {
        let yaml = BASE
            .replace("LISTENER_TLS", listener)
            .replace("CLUSTER_TLS", cluster);
        match Config::from_yaml(&yaml) {
            Ok(_) => ConfigError::new("<none>", "accepted"),
            Err(err) => err,
        }
    }

    #[test]
    fn tls_settings_parse_and_are_checked() {
        let cases = [
            (
                "tls: { cert_file: c.pem, key_file: k.pem, require_client_cert: true }",
                "",
                "listeners[0].tls.require_client_cert",
                "needs `client_ca_file`",
            ),
            (
                "tls: { cert_file: c.pem, key_file: k.pem, crl_files: [ crl.pem ] }",
                "",
                "listeners[0].tls.crl_files",
                "needs `client_ca_file`",
            ),
            (
                "tls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem, crl_files: [ \"\" ] }",
                "",
                "listeners[0].tls.crl_files[0]",
                "must not be empty",
            ),
            (
                "tls: { cert_file: c.pem }",
                "",
                "listeners[0].tls",
                "missing field `key_file`",
            ),
            (
                "",
                "tls: { ca_file: ca.pem, cert_file: c.pem }",
                "clusters[0].tls.key_file",
                "needed with `cert_file`",
            ),
            (
                "",
                "tls: { ca_file: ca.pem, server_name: \"a b\" }",
                "clusters[0].tls.server_name",
                "not a DNS name",
            ),
            (
                "",
                "tls: { ca_file: ca.pem, crl_files: [ \"\" ] }",
                "clusters[0].tls.crl_files[0]",
                "must not be empty",
            ),
            (
                "",
                "tls: { ca_file: ca.pem, subject_alt_names: [ \"\" ] }",
                "clusters[0].tls.subject_alt_names[0]",
                "must not be empty",
            ),
            (
                "",
                "tls: { ca_file: ca.pem, alpn_protocols: [ istio, \"\" ] }",
                "clusters[0].tls.alpn_protocols[1]",
                "must be 1 to 255 bytes long",
            ),
        ];
        for (listener, cluster, field, reason) in cases {
            let err = error_of(listener, cluster);
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains(reason), "{err}");
            assert!(err.position.is_some(), "{err}");
        }
        let alpn = |protocols: &[String]| {
            format!(
                "tls: {{ ca_file: ca.pem, alpn_protocols: [ {} ] }}",
                protocols.join(", ")
            )
        };
        let many: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
        let err = error_of("", &alpn(&many));
        assert_eq!(err.field, "clusters[0].tls.alpn_protocols", "{err}");
        assert!(err.reason.contains("at most 16 protocols"), "{err}");
        let err = error_of("", &alpn(&vec!["x".repeat(200); 6]));
        assert_eq!(err.field, "clusters[0].tls.alpn_protocols", "{err}");
        assert!(err.reason.contains("at most 1024 bytes"), "{err}");
        let fits = error_of("", &alpn(&many[..16]));
        assert_eq!(fits.reason, "accepted");
        let accepted = error_of(
            "tls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem, require_client_cert: true, crl_files: [ crl.pem ] }",
            "tls: { ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, server_name: provider.default.svc, crl_files: [ crl.pem ], alpn_protocols: [ istio-peer-exchange, istio ] }",
        );
        assert_eq!(accepted.reason, "accepted");
    }
}
