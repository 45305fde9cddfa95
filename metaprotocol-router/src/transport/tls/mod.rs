//! TLS on both sides of the proxy, with rustls and its `ring` provider only.
//!
//! A listener's [`TlsAcceptor`] terminates clients' TLS, verifying client certificates against
//! the listener's CA when it has one (and requiring them with `require_client_cert`); what the
//! handshake reveals (SNI, the client's URI and DNS SANs and subject) becomes the connection's
//! [`Accepted`]. A cluster's [`TlsConnector`] originates TLS to endpoints, verifying their
//! certificates (by host name or IP, or by the SANs a mesh certificate carries) and presenting
//! the proxy's client certificate when configured. Both re-read their files when they change
//! ([`reload`]), and watch the dates of the certificate they present ([`expiry`]).

mod expiry;
mod grpc;
mod identity;
mod pem;
mod reload;
mod verify;

pub use grpc::GrpcTlsConnector;
pub(crate) use pem::MAX_FILE_BYTES;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateRevocationListDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use self::pem::Peers;
use self::reload::{Files, Reloading};
use self::verify::SubjectAltNameVerifier;
use super::{Accepted, Connector};
use crate::config::{ClusterTlsSpec, ConfigError, ListenerTlsSpec};
use crate::stats::Counter;
use crate::stats::MetricsScope;

/// The one crypto provider: a build with two providers compiled in would make rustls pick
/// neither at run time.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls' error as the config's.
fn tls_error(field: &str, err: rustls::Error) -> ConfigError {
    ConfigError::new(field, err.to_string())
}

/// The error of a handshake that did not finish in time.
fn handshake_timeout(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("TLS handshake timed out after {timeout:?}"),
    )
}

/// The error of a handshake given up because the listener stopped.
fn handshake_stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "TLS handshake given up: the listener stopped",
    )
}

/// The series of a listener's acceptor, in `scope`: its handshakes that failed, and those under
/// way.
fn acceptor_series(scope: &MetricsScope) -> (Counter, Gauge) {
    (
        scope.counter(
            "downstream_tls_handshake_errors",
            "Client connections closed because their TLS handshake failed or timed out",
        ),
        scope.gauge(
            "downstream_tls_handshakes_active",
            "Client connections whose TLS handshake is under way",
        ),
    )
}

/// Terminates clients' TLS on one listener.
pub(crate) struct TlsAcceptor {
    config: Arc<Reloading<ServerConfig>>,
    handshake_errors: Counter,
    /// Client connections whose handshake is under way (part of the listener's open
    /// connections, which its `max_connections` counts from their accept).
    handshakes: Gauge,
}

/// One handshake counted in [`TlsAcceptor::handshakes`] until dropped (finished, failed, or its
/// task dropped).
struct HandshakeUnderWay<'a>(&'a Gauge);

impl<'a> HandshakeUnderWay<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for HandshakeUnderWay<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// The acceptor of listener `listener` with `spec`; its series live in `scope`.
    pub fn new(
        spec: &ListenerTlsSpec,
        listener: &str,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let owned = spec.clone();
        let config = Reloading::start(
            spec.files(),
            Box::new(move |files| server_config(&owned, files)),
            format!("listener {listener}"),
            scope,
        )?;
        let (handshake_errors, handshakes) = acceptor_series(scope);
        Ok(Self {
            config,
            handshake_errors,
            handshakes,
        })
    }

    /// Holds its series in `scope` too: the scope of the listener's next context, which keeps
    /// this acceptor (its `tls` unchanged), so that they outlive the context they were made for.
    pub fn hold_series(&self, scope: &MetricsScope) {
        acceptor_series(scope);
        self.config.hold_series(scope);
    }

    /// Runs the server side of the handshake on `stream` within `timeout`, giving up when
    /// `stop` is cancelled (the listener stops: a connection not yet serving has nothing to
    /// drain); a failure is counted. The handshake counts in
    /// `downstream_tls_handshakes_active` while it runs.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Accepted)> {
        let _under_way = HandshakeUnderWay::new(&self.handshakes);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let handshake = tokio::select! {
            biased;
            () = stop.cancelled() => return Err(handshake_stopped()),
            handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                self.handshake_errors.inc();
                return Err(err);
            }
            Err(_) => {
                self.handshake_errors.inc();
                return Err(handshake_timeout(timeout));
            }
        };
        let (_, session) = stream.get_ref();
        // A verified certificate whose names cannot be read is refused: taken for a client
        // without a certificate, it would pass the rules that deny its names.
        let peer_identity = match session.peer_certificates().and_then(|chain| chain.first()) {
            None => None,
            Some(leaf) => match identity::peer_identity(leaf) {
                Some(identity) => Some(Arc::new(identity)),
                None => {
                    self.handshake_errors.inc();
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client certificate's names cannot be read",
                    ));
                }
            },
        };
        let accepted = Accepted {
            sni: session.server_name().map(Arc::from),
            peer_identity,
        };
        Ok((stream, accepted))
    }
}

fn server_config(spec: &ListenerTlsSpec, files: &Files) -> Result<ServerConfig, ConfigError> {
    let provider = provider();
    let certs = files.get("cert_file")?.certificates()?;
    let key = files.get("key_file")?.private_key()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| tls_error("", err))?;
    let builder = match &spec.client_ca_file {
        Some(_) => {
            let trust = files.get("client_ca_file")?.trust(Peers::Clients)?;
            let roots = Arc::new(trust.roots);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .with_crls(revocation_lists(trust.revocation_lists, files)?);
            let verifier = if spec.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            };
            let verifier =
                verifier.map_err(|err| verifier_error("client_ca_file", err, &roots, files))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|err| tls_error("key_file", err))
}

/// The certificate revocation lists peers are checked against: `bundled`, those of the CA
/// bundle (Envoy loads a bundle's `X509 CRL` blocks with its certificates, and checks
/// revocation as soon as it holds one), then those of every file of `crl_files`. With any,
/// every certificate of a peer's chain must have a list of its issuer among them, as Envoy
/// checks by default (`only_verify_leaf_cert_crl: false`: BoringSSL's `X509_V_FLAG_CRL_CHECK_ALL`),
/// and rustls' verifiers do with lists (the whole chain, an unknown status refused).
fn revocation_lists(
    bundled: Vec<CertificateRevocationListDer<'static>>,
    files: &Files,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let mut crls = bundled;
    for file in files.all("crl_files") {
        crls.extend(file.revocation_lists()?);
    }
    Ok(crls)
}

/// A certificate verifier's error as the config's: a revocation list it cannot read is
/// `crl_files`' when their lists alone are refused too, else the bundle's (`ca_field`); any
/// other error (no trust anchor) is `ca_field`'s. `roots` are the verifier's.
fn verifier_error(
    ca_field: &str,
    err: VerifierBuilderError,
    roots: &Arc<RootCertStore>,
    files: &Files,
) -> ConfigError {
    let field = match err {
        VerifierBuilderError::InvalidCrl(_) if crl_files_refused(roots, files) => "crl_files",
        _ => ca_field,
    };
    ConfigError::new(field, err.to_string())
}

/// True if a verifier of `roots` refuses the lists of `crl_files` alone: asked only once a
/// verifier was refused for a list, to name the field that holds it.
fn crl_files_refused(roots: &Arc<RootCertStore>, files: &Files) -> bool {
    match revocation_lists(Vec::new(), files) {
        Ok(listed) if listed.is_empty() => false,
        Ok(listed) => WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .with_crls(listed)
            .build()
            .is_err(),
        Err(_) => true,
    }
}

/// Originates TLS to the endpoints of one cluster (or one [`crate::Client`]), or to a server
/// the proxy itself talks to (the xDS management server, see [`TlsConnector::grpc`]): verifies
/// the server's certificate, presents the client certificate when configured, and re-reads its
/// files when they change.
pub struct TlsConnector {
    config: Arc<Reloading<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    handshake_errors: Counter,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// The connector of cluster `cluster` with `spec`; its series live in `scope`.
    pub(crate) fn new(
        spec: &ClusterTlsSpec,
        cluster: &str,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let alpn = spec
            .alpn_protocols
            .iter()
            .map(|protocol| protocol.as_bytes().to_vec())
            .collect();
        Self::build(spec, format!("cluster {cluster}"), alpn, scope)
    }

    /// A connector to a gRPC server (it offers ALPN `h2`, which gRPC servers may require),
    /// named `owner` in logs; its series (handshake errors, certificate reloads) live in
    /// `scope`. Errors name the field of `spec` at fault (a file that cannot be read, a key
    /// that does not match its certificate, `alpn_protocols`: gRPC's is `h2`).
    pub fn grpc(
        spec: &ClusterTlsSpec,
        owner: &str,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        spec.validate_for_grpc()?;
        Self::build(spec, owner.to_owned(), vec![b"h2".to_vec()], scope)
    }

    fn build(
        spec: &ClusterTlsSpec,
        owner: String,
        alpn: Vec<Vec<u8>>,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let server_name = match &spec.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                ConfigError::new(
                    "server_name",
                    format!("`{name}` is not a DNS name or an IP address"),
                )
            })?),
            None => None,
        };
        let owned = spec.clone();
        let config = Reloading::start(
            spec.files(),
            Box::new(move |files| {
                let mut config = client_config(&owned, files)?;
                config.alpn_protocols.clone_from(&alpn);
                Ok(config)
            }),
            owner,
            scope,
        )?;
        Ok(Self {
            config,
            server_name,
            handshake_errors: scope.counter(
                "upstream_tls_handshake_errors",
                "Upstream connections whose TLS handshake failed or timed out",
            ),
        })
    }

    /// Opens a TCP connection to `address` and runs the client side of the handshake, both
    /// within `timeout`. The server name is the configured one, else the endpoint's IP address.
    pub async fn connect(
        &self,
        address: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let deadline = crate::router::deadline_after(tokio::time::Instant::now(), timeout);
        let stream = Connector::connect_plain(address, timeout).await?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => {
                self.handshake_errors.inc();
                Err(err)
            }
            Err(_) => {
                self.handshake_errors.inc();
                Err(handshake_timeout(timeout))
            }
        }
    }
}

fn client_config(spec: &ClusterTlsSpec, files: &Files) -> Result<ClientConfig, ConfigError> {
    let provider = provider();
    let trust = files.get("ca_file")?.trust(Peers::Servers)?;
    let roots = Arc::new(trust.roots);
    let crls = revocation_lists(trust.revocation_lists, files)?;
    let checks_revocation = !crls.is_empty();
    // Verifies the chain (revocation included) and the server name.
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|err| verifier_error("ca_file", err, &roots, files))?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| tls_error("", err))?;
    let builder = if spec.subject_alt_names.is_empty() {
        builder.with_webpki_verifier(webpki)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SubjectAltNameVerifier::new(
                roots,
                checks_revocation.then_some(webpki),
                spec.subject_alt_names.clone(),
                provider,
            )))
    };
    match (&spec.cert_file, &spec.key_file) {
        (Some(_), Some(_)) => builder
            .with_client_auth_cert(
                files.get("cert_file")?.certificates()?,
                files.get("key_file")?.private_key()?,
            )
            .map_err(|err| tls_error("key_file", err)),
        _ => Ok(builder.with_no_client_auth()),
    }
}
