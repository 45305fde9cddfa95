//! TLS to the management server (`dynamic.xds.tls`): the engine's own TLS connector, with the
//! settings and checks of a cluster's `tls` (server CA, optional client certificate for mutual
//! TLS, server name or SANs to verify, certificates re-read when they change on disk), plugged
//! into tonic as the connector of the ADS channel. The server name defaults to the host of
//! `dynamic.xds.address`, as a gRPC client's does.

use metaprotocol_router::config::{ClusterTlsSpec, XdsSpec};
use metaprotocol_router::{ConfigError, GrpcTlsConnector, MetricsScope, TlsConnector};

/// The connector of the ADS channel for `spec`'s server, or `None` for plaintext; its series
/// (handshake errors, certificate reloads) live in `scope`. Errors name the field under
/// `xds.tls`.
pub(crate) fn server_tls(
    spec: &XdsSpec,
    scope: &MetricsScope,
) -> Result<Option<GrpcTlsConnector>, ConfigError> {
    let Some(tls) = &spec.tls else {
        return Ok(None);
    };
    let tls = ClusterTlsSpec {
        server_name: Some(
            tls.server_name
                .clone()
                .unwrap_or_else(|| spec.address.host().to_owned()),
        ),
        ..tls.clone()
    };
    let connector = TlsConnector::grpc(&tls, &format!("xDS server {}", spec.address), scope)
        .map_err(|err| err.within("xds.tls"))?;
    Ok(Some(GrpcTlsConnector::new(
        connector,
        spec.address.to_string(),
        spec.connect_timeout,
    )))
}
