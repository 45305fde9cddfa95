//! Handshakes over real sockets on 127.0.0.1, with certificates made here (rcgen): which server
//! certificates a cluster's `subject_alt_names` accept, and which client certificates a
//! listener takes for an identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::pem::{Peers, PemFile};
use super::{TlsAcceptor, TlsConnector, provider};
use crate::config::{ClusterTlsSpec, ListenerTlsSpec};
use crate::stats::Metrics;
#[cfg(target_os = "linux")]
use crate::testing::Opens;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A CA and the certificates it issues, as PEM files in a directory of their own.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
    /// The PEM of the CA's own certificate when it is an intermediate (sent after the leaf).
    chain: String,
}

/// A certificate's and its key's files.
struct Issued {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new(test: &str) -> TestResult<Self> {
        let dir = std::env::temp_dir().join(format!("tls-{test}-{}", std::process::id()));
        Self::create(dir, "test CA", None)
    }

    /// An intermediate CA issued by this one, in a directory of its own under this one's.
    fn intermediate(&self) -> TestResult<Self> {
        Self::create(
            self.dir.join("intermediate"),
            "test intermediate",
            Some(self),
        )
    }

    /// A CA named `name` in `dir`: self-signed, or issued by `parent` (then an intermediate,
    /// sent after the leaves it issues).
    fn create(dir: PathBuf, name: &str, parent: Option<&Pki>) -> TestResult<Self> {
        std::fs::create_dir_all(&dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (cert, chain) = match parent {
            None => (params.self_signed(&key)?, String::new()),
            Some(parent) => {
                let cert = params.signed_by(&key, &parent.issuer)?;
                let pem = cert.pem();
                (cert, pem)
            }
        };
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem())?;
        Ok(Self {
            dir,
            issuer: Issuer::new(params, key),
            ca_file,
            chain,
        })
    }

    /// A certificate for server and client authentication, named `file`, with `sans` (and
    /// `raw_san`, the DER of a subject alternative name extension, instead when given).
    fn issue(
        &self,
        file: &str,
        sans: Vec<SanType>,
        raw_san: Option<Vec<u8>>,
    ) -> TestResult<Issued> {
        self.issue_with(file, sans, raw_san, |_| {})
    }

    /// A certificate revocation list of this CA that revokes the certificates of `serials`.
    fn revocation_list(&self, serials: &[u64]) -> TestResult<String> {
        let long_ago = rcgen::date_time_ymd(2020, 1, 1);
        let params = CertificateRevocationListParams {
            this_update: long_ago,
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(serials.len() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: long_ago,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// A cluster's `tls` settings (flow YAML) trusting this CA and presenting a certificate of
    /// `proxy.test`, in `file`, valid from 2020 to the start of `year`.
    fn tls_until(&self, file: &str, year: i32) -> TestResult<String> {
        let issued = self.issue_with(file, vec![dns("proxy.test")?], None, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        })?;
        Ok(format!(
            "{{ ca_file: {}, cert_file: {}, key_file: {} }}",
            self.ca_file.display(),
            issued.cert_file.display(),
            issued.key_file.display()
        ))
    }

    /// As [`Pki::issue`], with the parameters changed by `adjust` (the dates, say).
    fn issue_with(
        &self,
        file: &str,
        sans: Vec<SanType>,
        raw_san: Option<Vec<u8>>,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> TestResult<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        if let Some(der) = raw_san {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(&[2, 5, 29, 17], der));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_file: self.dir.join(format!("{file}.pem")),
            key_file: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&issued.cert_file, cert.pem() + &self.chain)?;
        std::fs::write(&issued.key_file, key.serialize_pem())?;
        Ok(issued)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dns(name: &str) -> TestResult<SanType> {
    Ok(SanType::DnsName(name.try_into()?))
}

fn uri(name: &str) -> TestResult<SanType> {
    Ok(SanType::URI(name.try_into()?))
}

/// A TLS server on 127.0.0.1 presenting `server`, finishing every handshake it can.
async fn serve(server: &Issued) -> TestResult<SocketAddr> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            PemFile::read("cert_file", &server.cert_file)?.certificates()?,
            PemFile::read("key_file", &server.key_file)?.private_key()?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = acceptor.accept(stream).await {
                    let _ = stream.read(&mut [0; 1]).await;
                }
            });
        }
    });
    Ok(address)
}

/// True if a cluster whose `tls` expects `names` completes a handshake with a server presenting
/// `server`.
async fn cluster_accepts(pki: &Pki, server: &Issued, names: &[&str]) -> TestResult<bool> {
    let address = serve(server).await?;
    let spec = trusting(&pki.ca_file, names);
    Ok(connects(&spec, address).await?.is_ok())
}

/// A cluster's `tls` trusting the CAs of `ca_file` and expecting `names`.
fn trusting(ca_file: &Path, names: &[&str]) -> ClusterTlsSpec {
    ClusterTlsSpec {
        ca_file: ca_file.to_owned(),
        cert_file: None,
        key_file: None,
        server_name: None,
        subject_alt_names: names.iter().map(|name| (*name).to_owned()).collect(),
        crl_files: Vec::new(),
        alpn_protocols: Vec::new(),
    }
}

/// How the handshake of a cluster with `spec` with the server at `address` ends.
async fn connects(spec: &ClusterTlsSpec, address: SocketAddr) -> TestResult<std::io::Result<()>> {
    let connector = TlsConnector::new(spec, "c", &Metrics::new().root())?;
    Ok(connector
        .connect(address, Duration::from_secs(5))
        .await
        .map(drop))
}

/// A cluster's `alpn_protocols` are offered in its handshakes: a real rustls server records
/// the protocols of the client hello (an Istio sidecar in PERMISSIVE mode terminates its mutual
/// TLS only for a client offering `istio-peer-exchange` or `istio`).
#[tokio::test]
async fn a_cluster_offers_its_alpn_protocols() -> TestResult {
    let pki = Pki::new("alpn")?;
    let server = pki.issue("server", vec![dns("provider.default.svc")?], None)?;
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                PemFile::read("cert_file", &server.cert_file)?.certificates()?,
                PemFile::read("key_file", &server.key_file)?.private_key()?,
            )?,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let offered = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let hello =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let offered: Vec<String> = hello
            .client_hello()
            .alpn()
            .into_iter()
            .flatten()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned())
            .collect();
        // The handshake is finished, so that the client's ends as it would with a sidecar.
        let stream = hello.into_stream(config).await?;
        std::io::Result::Ok((offered, stream))
    });
    let spec = ClusterTlsSpec {
        ca_file: pki.ca_file.clone(),
        cert_file: None,
        key_file: None,
        server_name: Some("provider.default.svc".to_owned()),
        subject_alt_names: Vec::new(),
        crl_files: Vec::new(),
        alpn_protocols: vec!["istio-peer-exchange".to_owned(), "istio".to_owned()],
    };
    let connector = TlsConnector::new(&spec, "c", &Metrics::new().root())?;
    let _client = connector.connect(address, Duration::from_secs(5)).await?;
    let (offered, _server) = tokio::time::timeout(Duration::from_secs(5), offered).await???;
    assert_eq!(
        offered,
        ["istio-peer-exchange", "istio"],
        "the protocols offered"
    );
    Ok(())
}

const PROVIDER_ID: &str = "spiffe://cluster.local/ns/default/sa/provider";

#[tokio::test]
async fn expected_names_are_found_among_sans_of_their_own_type() -> TestResult {
    let pki = Pki::new("san-types")?;
    // The usual cases: a SPIFFE id as a URI SAN, a host name as a DNS SAN.
    let mesh = pki.issue("mesh", vec![uri(PROVIDER_ID)?], None)?;
    assert!(cluster_accepts(&pki, &mesh, &[PROVIDER_ID]).await?);
    assert!(!cluster_accepts(&pki, &mesh, &["spiffe://cluster.local/ns/default/sa/other"]).await?);
    let host = pki.issue("host", vec![dns("provider.default.svc")?], None)?;
    assert!(cluster_accepts(&pki, &host, &["provider.default.svc"]).await?);

    // A DNS SAN that spells the SPIFFE id is not that workload's identity, nor is a URI SAN that
    // spells the host name that host.
    let spelled = pki.issue("spelled", vec![dns(PROVIDER_ID)?], None)?;
    assert!(
        !cluster_accepts(&pki, &spelled, &[PROVIDER_ID]).await?,
        "a DNS SAN passed for a SPIFFE id"
    );
    let uri_host = pki.issue("uri-host", vec![uri("provider.default.svc")?], None)?;
    assert!(
        !cluster_accepts(&pki, &uri_host, &["provider.default.svc"]).await?,
        "a URI SAN passed for a DNS name"
    );

    // DNS names are compared as DNS compares them, without regard to ASCII case.
    let upper = pki.issue("upper", vec![dns("Provider.Default.SVC")?], None)?;
    assert!(
        cluster_accepts(&pki, &upper, &["provider.default.svc"]).await?,
        "a DNS SAN in capitals was refused"
    );

    // A wildcard DNS SAN names the hosts one label below it, as a host name check has it; it
    // used to name nothing but itself, so a server with a wildcard certificate was refused.
    let wildcard = pki.issue("wildcard", vec![dns("*.default.svc")?], None)?;
    assert!(
        cluster_accepts(&pki, &wildcard, &["provider.default.svc"]).await?,
        "a wildcard DNS SAN was refused for a name it covers"
    );
    assert!(!cluster_accepts(&pki, &wildcard, &["a.provider.default.svc"]).await?);
    Ok(())
}

/// A listener's `tls` with `client_ca_file`, `require_client_cert` and `crl_files`.
fn mutual_tls(pki: &Pki, crl_files: Vec<PathBuf>) -> TestResult<ListenerTlsSpec> {
    let server = pki.issue("listener", vec![dns("listener.test")?], None)?;
    Ok(ListenerTlsSpec {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        client_ca_file: Some(pki.ca_file.clone()),
        require_client_cert: true,
        crl_files,
    })
}

/// A listener with `client_ca_file` (and `require_client_cert`) on 127.0.0.1, and what it
/// makes of one client presenting `client`: its identity's URI SANs, or the handshake's error.
async fn accepted_identity(pki: &Pki, client: &Issued) -> TestResult<Result<Vec<String>, String>> {
    let acceptor = TlsAcceptor::new(&mutual_tls(pki, Vec::new())?, "in", &Metrics::new().root())?;
    identity_through(&acceptor, pki, client).await
}

/// What `acceptor` (on 127.0.0.1) makes of one client that trusts `pki` and presents `client`:
/// its identity's URI SANs, or the handshake's error.
async fn identity_through(
    acceptor: &TlsAcceptor,
    pki: &Pki,
    client: &Issued,
) -> TestResult<Result<Vec<String>, String>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;

    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(
            PemFile::read("ca_file", &pki.ca_file)?
                .trust(Peers::Servers)?
                .roots,
        )
        .with_client_auth_cert(
            PemFile::read("cert_file", &client.cert_file)?.certificates()?,
            PemFile::read("key_file", &client.key_file)?.private_key()?,
        )?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let client_side = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let mut stream = connector
            .connect(ServerName::try_from("listener.test")?, stream)
            .await?;
        // Held open until the listener is done with it.
        let _ = stream.read(&mut [0; 1]).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let (stream, _) = listener.accept().await?;
    let accepted = acceptor
        .accept(stream, Duration::from_secs(5), &CancellationToken::new())
        .await;
    let outcome = match accepted {
        Ok((stream, accepted)) => {
            drop(stream);
            Ok(accepted
                .peer_identity
                .map(|identity| identity.uri_sans.clone())
                .unwrap_or_default())
        }
        Err(err) => Err(err.to_string()),
    };
    let _ = client_side.await;
    Ok(outcome)
}

#[tokio::test]
async fn a_client_certificate_whose_names_cannot_be_read_is_refused() -> TestResult {
    let pki = Pki::new("unreadable-sans")?;
    let reader = pki.issue(
        "reader",
        vec![uri("spiffe://cluster.local/ns/a/sa/reader")?],
        None,
    )?;
    assert_eq!(
        accepted_identity(&pki, &reader).await?,
        Ok(vec!["spiffe://cluster.local/ns/a/sa/reader".to_owned()])
    );

    // Its SAN extension holds its SPIFFE id and, after it, an element that is no GeneralName (a
    // UTF8String): rustls verifies the chain without reading SANs, and takes the certificate;
    // its names cannot be read. Taken for a client without names, it would pass a policy that
    // denies its SPIFFE id.
    let id = b"spiffe://cluster.local/ns/a/sa/denied";
    let mut names = vec![0x86, id.len() as u8];
    names.extend_from_slice(id);
    names.extend_from_slice(&[0x0c, 1, b'x']);
    let mut san = vec![0x30, names.len() as u8];
    san.extend_from_slice(&names);
    let unreadable = pki.issue("unreadable", Vec::new(), Some(san))?;
    let outcome = accepted_identity(&pki, &unreadable).await?;
    assert!(
        outcome.is_err(),
        "a client whose names cannot be read was accepted as {outcome:?}"
    );
    Ok(())
}

/// A client certificate issued by an intermediate CA is verified through the intermediate the
/// client sends after it, to the listener's root; without the intermediate it is refused.
#[tokio::test]
async fn client_certificates_of_an_intermediate_ca_are_verified_through_it() -> TestResult {
    let pki = Pki::new("intermediate")?;
    let intermediate = pki.intermediate()?;
    let id = "spiffe://cluster.local/ns/a/sa/via-intermediate";
    let client = intermediate.issue("client", vec![uri(id)?], None)?;
    assert_eq!(
        accepted_identity(&pki, &client).await?,
        Ok(vec![id.to_owned()])
    );
    let leaf_only = std::fs::read_to_string(&client.cert_file)?.replace(&intermediate.chain, "");
    std::fs::write(&client.cert_file, leaf_only)?;
    assert!(accepted_identity(&pki, &client).await?.is_err());
    Ok(())
}

/// True if a client that trusts `pki` and expects `name` completes a handshake with
/// `acceptor` (on a socket of 127.0.0.1).
async fn serves(acceptor: &TlsAcceptor, pki: &Pki, name: &str) -> TestResult<bool> {
    Ok(handshake(acceptor, pki, name).await?.is_ok())
}

/// How the handshake of a client that trusts `pki` and expects `name` with `acceptor` ends,
/// on the client's side.
async fn handshake(
    acceptor: &TlsAcceptor,
    pki: &Pki,
    name: &str,
) -> TestResult<std::io::Result<()>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(
            PemFile::read("ca_file", &pki.ca_file)?
                .trust(Peers::Servers)?
                .roots,
        )
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.to_owned())?;
    let client_side = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(address).await?;
        connector.connect(name, stream).await.map(drop)
    });
    let (stream, _) = listener.accept().await?;
    let _ = acceptor
        .accept(stream, Duration::from_secs(5), &CancellationToken::new())
        .await;
    Ok(client_side.await?)
}

/// Replaces the file at `path` whole (by rename), so that the watcher sees each step once.
fn put(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let part = path.with_extension("part");
    std::fs::write(&part, contents)?;
    std::fs::rename(&part, path)
}

/// The value of the series `name{labels}` (labels as exposed: `outcome="applied"`, or none);
/// 0 if there is none.
fn series(metrics: &Metrics, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("metaprotocol_{name} ")
    } else {
        format!("metaprotocol_{name}{{{labels}}} ")
    };
    metrics
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(prefix.as_str())?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Certificate reloads with `outcome` (of the one acceptor or connector `metrics` has).
fn reloads(metrics: &Metrics, outcome: &str) -> f64 {
    series(
        metrics,
        "tls_certificate_reloads_total",
        &format!("outcome=\"{outcome}\""),
    )
}

/// A listener's acceptor serving the pair of files `served.pem` and `served-key.pem` in
/// `pki`'s folder, first written from `first`; its reloads counted in the metrics returned.
fn serving_files(pki: &Pki, first: &Issued) -> TestResult<(ListenerTlsSpec, Metrics, TlsAcceptor)> {
    let spec = ListenerTlsSpec {
        cert_file: pki.dir.join("served.pem"),
        key_file: pki.dir.join("served-key.pem"),
        client_ca_file: None,
        require_client_cert: false,
        crl_files: Vec::new(),
    };
    put(&spec.cert_file, &std::fs::read(&first.cert_file)?)?;
    put(&spec.key_file, &std::fs::read(&first.key_file)?)?;
    let metrics = Metrics::new();
    let acceptor = TlsAcceptor::new(&spec, "in", &metrics.root())?;
    Ok((spec, metrics, acceptor))
}

/// Waits for the watcher to have looked at the files twice.
async fn settle() {
    tokio::time::sleep(crate::file_stamp::RELOAD_INTERVAL * 2 + Duration::from_millis(500)).await;
}

/// Rotating a listener's files certificate first, key second: the mismatched pair in between is
/// rejected and counted, the old pair served meanwhile, and the new pair taken once the key is
/// written; a file caught half-written is rejected the same way.
#[tokio::test]
async fn a_mismatched_or_half_written_pair_keeps_the_old_one_until_the_next_good_write()
-> TestResult {
    let pki = Pki::new("reload")?;
    let old = pki.issue("old", vec![dns("old.test")?], None)?;
    let new = pki.issue("new", vec![dns("new.test")?], None)?;
    let (spec, metrics, acceptor) = serving_files(&pki, &old)?;
    let reloads = |outcome: &str| reloads(&metrics, outcome);
    assert!(serves(&acceptor, &pki, "old.test").await?);

    // The new certificate, the old key.
    put(&spec.cert_file, &std::fs::read(&new.cert_file)?)?;
    settle().await;
    assert_eq!(reloads("rejected"), 1.0);
    assert_eq!(reloads("applied"), 0.0);
    assert!(
        serves(&acceptor, &pki, "old.test").await?,
        "the old pair is no longer served"
    );

    // Half of the new key.
    let key = std::fs::read(&new.key_file)?;
    put(&spec.key_file, &key[..key.len() / 2])?;
    settle().await;
    assert_eq!(reloads("rejected"), 2.0);
    assert!(
        serves(&acceptor, &pki, "old.test").await?,
        "the old pair is no longer served"
    );

    // All of it.
    put(&spec.key_file, &key)?;
    settle().await;
    assert_eq!(reloads("applied"), 1.0);
    assert!(
        serves(&acceptor, &pki, "new.test").await?,
        "the new pair is not served"
    );
    assert!(!serves(&acceptor, &pki, "old.test").await?);
    Ok(())
}

/// The watcher looks at files that do not change without reading them (only their metadata),
/// and still reads and takes them when they are rewritten in place.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn certificate_files_are_read_only_when_they_change() -> TestResult {
    let pki = Pki::new("read-on-change")?;
    let old = pki.issue("old", vec![dns("old.test")?], None)?;
    let new = pki.issue("new", vec![dns("new.test")?], None)?;
    let spec = ListenerTlsSpec {
        cert_file: old.cert_file.clone(),
        key_file: old.key_file.clone(),
        client_ca_file: Some(pki.ca_file.clone()),
        require_client_cert: false,
        crl_files: Vec::new(),
    };
    let metrics = Metrics::new();
    let acceptor = TlsAcceptor::new(&spec, "in", &metrics.root())?;
    // Files changed a moment ago are read at each look for a while (see reload.rs): the
    // quiet starts once they are older.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let files = [&spec.cert_file, &spec.key_file, &pki.ca_file];
    let opens = files
        .iter()
        .map(|file| Opens::of(file))
        .collect::<Result<Vec<_>, _>>()?;
    settle().await;
    settle().await;
    for (file, opens) in files.iter().zip(&opens) {
        assert!(
            !opens.opened()?,
            "{} was read again though it did not change",
            file.display()
        );
    }

    // Rewritten in place, key first: the pair is taken (after a mismatched pair, perhaps).
    std::fs::write(&spec.key_file, std::fs::read(&new.key_file)?)?;
    std::fs::write(&spec.cert_file, std::fs::read(&new.cert_file)?)?;
    settle().await;
    assert!(opens[0].opened()?, "the changed certificate was not read");
    assert!(
        serves(&acceptor, &pki, "new.test").await?,
        "the new pair is not served"
    );
    assert!(reloads(&metrics, "applied") >= 1.0);
    Ok(())
}

/// A Kubernetes secret volume: each file is a symlink through `..data`, itself a symlink to a
/// directory of the secret's files, which the kubelet swaps (by rename) for a new directory
/// when the secret changes. The files the proxy names never change themselves.
#[tokio::test]
async fn a_secret_volume_swapped_by_its_data_symlink_is_taken() -> TestResult {
    use std::os::unix::fs::symlink;

    let pki = Pki::new("secret-volume")?;
    let old = pki.issue("old", vec![dns("old.test")?], None)?;
    let new = pki.issue("new", vec![dns("new.test")?], None)?;
    let volume = pki.dir.join("volume");
    let version = |name: &str, issued: &Issued| -> TestResult {
        let dir = volume.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&issued.cert_file, dir.join("tls.crt"))?;
        std::fs::copy(&issued.key_file, dir.join("tls.key"))?;
        let swapped = volume.join("..data_tmp");
        symlink(name, &swapped)?;
        std::fs::rename(&swapped, volume.join("..data"))?;
        Ok(())
    };
    version("..2026_12_06_07_00_00.1", &old)?;
    symlink("..data/tls.crt", volume.join("tls.crt"))?;
    symlink("..data/tls.key", volume.join("tls.key"))?;
    let spec = ListenerTlsSpec {
        cert_file: volume.join("tls.crt"),
        key_file: volume.join("tls.key"),
        client_ca_file: None,
        require_client_cert: false,
        crl_files: Vec::new(),
    };
    let metrics = Metrics::new();
    let acceptor = TlsAcceptor::new(&spec, "in", &metrics.root())?;
    assert!(serves(&acceptor, &pki, "old.test").await?);

    version("..2026_12_06_07_00_01.2", &new)?;
    std::fs::remove_dir_all(volume.join("..2026_12_06_07_00_00.1"))?;
    settle().await;
    assert_eq!(reloads(&metrics, "applied"), 1.0);
    assert_eq!(reloads(&metrics, "rejected"), 0.0);
    assert!(
        serves(&acceptor, &pki, "new.test").await?,
        "the swapped secret is not served"
    );
    Ok(())
}

/// A FIFO, released when dropped: a reader waiting to open it (code that should not have) then
/// goes on, and reads its end.
#[cfg(target_os = "linux")]
struct Fifo(PathBuf);

#[cfg(target_os = "linux")]
impl Fifo {
    fn new(path: PathBuf) -> TestResult<Self> {
        use rustix::fs::{CWD, Mode, mkfifoat};
        mkfifoat(CWD, &path, Mode::from_raw_mode(0o600))?;
        Ok(Self(path))
    }
}

#[cfg(target_os = "linux")]
impl Drop for Fifo {
    fn drop(&mut self) {
        // Opening a FIFO for reading and writing never waits on Linux; a waiting reader's open
        // completes with it.
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0);
    }
}

/// A sparse file of 64 MiB at `path`: sixteen times the bound, taking no room on disk.
#[cfg(target_os = "linux")]
fn huge_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.set_len(64 << 20)
}

/// A FIFO, a directory, a device or a huge file named as a TLS file is a config error that
/// names the field and the path, given at once (a FIFO used to hold the config's load until a
/// writer came, a device or huge file to be read whole).
#[cfg(target_os = "linux")]
#[test]
fn tls_files_that_are_no_regular_files_or_too_large_are_config_errors() -> TestResult {
    let pki = Pki::new("file-kinds")?;
    let server = pki.issue("server", vec![dns("server.test")?], None)?;
    let fifo = Fifo::new(pki.dir.join("fifo.pem"))?;
    let huge = pki.dir.join("huge.pem");
    huge_file(&huge)?;
    let cases = [
        (
            "cert_file",
            fifo.0.clone(),
            "it is a FIFO, not a regular file",
        ),
        (
            "key_file",
            pki.dir.clone(),
            "it is a directory, not a regular file",
        ),
        (
            "client_ca_file",
            PathBuf::from("/dev/null"),
            "it is a device, not a regular file",
        ),
        ("cert_file", huge, "larger than 4 MiB"),
    ];
    for (field, path, why) in cases {
        let mut spec = ListenerTlsSpec {
            cert_file: server.cert_file.clone(),
            key_file: server.key_file.clone(),
            client_ca_file: Some(pki.ca_file.clone()),
            require_client_cert: false,
            crl_files: Vec::new(),
        };
        match field {
            "cert_file" => spec.cert_file = path.clone(),
            "key_file" => spec.key_file = path.clone(),
            _ => spec.client_ca_file = Some(path.clone()),
        }
        // On a thread of its own, so that a load that waits forever fails the test (and is
        // released when `fifo` is dropped).
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(TlsAcceptor::new(&spec, "in", &Metrics::new().root()).map(drop));
        });
        let Ok(outcome) = outcome.recv_timeout(Duration::from_secs(10)) else {
            return Err(format!("loading {} as {field} did not end", path.display()).into());
        };
        let Err(err) = outcome else {
            return Err(format!("{} was taken as {field}", path.display()).into());
        };
        assert_eq!(err.field, field);
        let path = path.display().to_string();
        assert!(
            err.reason.contains(&path) && err.reason.contains(why),
            "{field} {path}: {err}"
        );
    }
    Ok(())
}

/// A FIFO renamed over a certificate file between the look at its path and its opening does
/// not hold the read: it is opened without waiting for a writer and refused as what the opened
/// handle is (a look at the path, then a blocking open, waited forever for a writer).
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_swapped_in_while_a_file_is_read_does_not_hold_the_read() -> TestResult {
    let pki = Pki::new("fifo-swap")?;
    let issued = pki.issue("server", vec![dns("server.test")?], None)?;
    let fifo = Fifo::new(pki.dir.join("fifo"))?;
    let (fifo_part, file_part) = (pki.dir.join("fifo.part"), pki.dir.join("file.part"));
    let path = pki.dir.join("swapped.pem");
    std::fs::copy(&issued.cert_file, &path)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Swaps the FIFO and the certificate in under `path`, one after the other, until stopped.
    let swapper = {
        let (stop, fifo, cert, path) = (
            stop.clone(),
            fifo.0.clone(),
            issued.cert_file.clone(),
            path.clone(),
        );
        std::thread::spawn(move || -> std::io::Result<()> {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::hard_link(&fifo, &fifo_part)?;
                std::fs::rename(&fifo_part, &path)?;
                std::fs::copy(&cert, &file_part)?;
                std::fs::rename(&file_part, &path)?;
            }
            Ok(())
        })
    };
    let (done, reads) = std::sync::mpsc::channel();
    {
        let path = path.clone();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < end {
                let _ = PemFile::read("cert_file", &path);
            }
            let _ = done.send(());
        });
    }
    let outcome = reads.recv_timeout(Duration::from_secs(20));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().map_err(|_| "the swapper panicked")??;
    // Releases a read that waits on the FIFO, so that the thread ends.
    drop(fifo);
    assert!(outcome.is_ok(), "a read waited on the FIFO swapped in");
    Ok(())
}

/// A certificate file replaced by a FIFO, then by a huge file, is rejected and counted as a
/// failed reload each time, and the old pair is served meanwhile; the next good pair is taken.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_certificate_replaced_by_a_fifo_or_a_huge_file_is_rejected_and_the_old_one_stays()
-> TestResult {
    let pki = Pki::new("reload-file-kinds")?;
    let old = pki.issue("old", vec![dns("old.test")?], None)?;
    let new = pki.issue("new", vec![dns("new.test")?], None)?;
    let (spec, metrics, acceptor) = serving_files(&pki, &old)?;
    assert!(serves(&acceptor, &pki, "old.test").await?);

    // Kept under a name of its own, so that it can be released after it is replaced.
    let fifo = Fifo::new(pki.dir.join("fifo"))?;
    let part = spec.cert_file.with_extension("part");
    std::fs::hard_link(&fifo.0, &part)?;
    std::fs::rename(&part, &spec.cert_file)?;
    settle().await;
    assert_eq!(
        reloads(&metrics, "rejected"),
        1.0,
        "the FIFO was not rejected"
    );
    assert!(
        serves(&acceptor, &pki, "old.test").await?,
        "the old pair is no longer served"
    );

    huge_file(&part)?;
    std::fs::rename(&part, &spec.cert_file)?;
    settle().await;
    assert_eq!(
        reloads(&metrics, "rejected"),
        2.0,
        "the huge file was not rejected"
    );
    assert!(
        serves(&acceptor, &pki, "old.test").await?,
        "the old pair is no longer served"
    );

    put(&spec.key_file, &std::fs::read(&new.key_file)?)?;
    put(&spec.cert_file, &std::fs::read(&new.cert_file)?)?;
    settle().await;
    assert_eq!(reloads(&metrics, "applied"), 1.0);
    assert!(
        serves(&acceptor, &pki, "new.test").await?,
        "the new pair is not served"
    );
    Ok(())
}

/// An expired certificate is served all the same (clients that check dates refuse it), and
/// the gauge of the presented chain's expiry shows its notAfter; a renewed one, once reloaded,
/// moves the gauge. Clusters' client certificates have the gauge too.
#[tokio::test]
async fn an_expired_certificate_is_served_and_its_expiry_is_a_gauge() -> TestResult {
    let pki = Pki::new("expiry")?;
    let expired = pki.issue_with("expired", vec![dns("served.test")?], None, |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })?;
    let renewed = pki.issue_with("renewed", vec![dns("served.test")?], None, |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    })?;
    let (spec, metrics, acceptor) = serving_files(&pki, &expired)?;
    let expiry = || series(&metrics, "tls_certificate_expiry_timestamp_seconds", "");
    // 2021-01-01T00:00:00Z.
    assert_eq!(expiry(), 1_609_459_200.0);
    let refused = handshake(&acceptor, &pki, "served.test").await?;
    assert!(
        matches!(&refused, Err(err) if err.to_string().contains("expired")),
        "the client did not see the expired certificate: {refused:?}"
    );

    put(&spec.key_file, &std::fs::read(&renewed.key_file)?)?;
    put(&spec.cert_file, &std::fs::read(&renewed.cert_file)?)?;
    settle().await;
    assert!(serves(&acceptor, &pki, "served.test").await?);
    // 2100-01-01T00:00:00Z.
    assert_eq!(expiry(), 4_102_444_800.0);

    let cluster = ClusterTlsSpec {
        ca_file: pki.ca_file.clone(),
        cert_file: Some(expired.cert_file.clone()),
        key_file: Some(expired.key_file.clone()),
        server_name: None,
        subject_alt_names: Vec::new(),
        crl_files: Vec::new(),
        alpn_protocols: Vec::new(),
    };
    let cluster_metrics = Metrics::new();
    let _connector = TlsConnector::new(&cluster, "c", &cluster_metrics.root())?;
    assert_eq!(
        series(
            &cluster_metrics,
            "tls_certificate_expiry_timestamp_seconds",
            ""
        ),
        1_609_459_200.0
    );
    Ok(())
}

/// The warnings logged on this thread while `run` runs, each as its fields (`name=value`).
fn warnings_of(run: impl FnOnce()) -> Vec<String> {
    use std::fmt::Write;
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata};

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    struct Warnings(Arc<Mutex<Vec<String>>>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() == Level::WARN
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            if let Ok(mut warnings) = self.0.lock() {
                warnings.push(fields.0);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let warnings = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::with_default(Warnings(warnings.clone()), run);
    let warnings = warnings.lock().map(|warnings| warnings.clone());
    warnings.unwrap_or_default()
}

/// Loading a certificate that has expired, or is not valid yet, logs a warning that names its
/// file, its subject (or first name) and its dates; a valid one logs none.
#[test]
fn certificates_out_of_their_dates_are_loaded_with_a_warning_naming_them() -> TestResult {
    let pki = Pki::new("expiry-warning")?;
    let expired = pki.issue_with("expired", vec![dns("expired.test")?], None, |params| {
        params
            .distinguished_name
            .push(DnType::CommonName, "expired server");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })?;
    let early = pki.issue_with("early", vec![dns("early.test")?], None, |params| {
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    })?;
    let valid = pki.issue("valid", vec![dns("valid.test")?], None)?;
    let cases = [
        (&expired, Some(("has expired", "CN=expired server", "2021"))),
        (&early, Some(("is not valid yet", "early.test", "2100"))),
        (&valid, None),
    ];
    for (issued, warning) in cases {
        let spec = ListenerTlsSpec {
            cert_file: issued.cert_file.clone(),
            key_file: issued.key_file.clone(),
            client_ca_file: None,
            require_client_cert: false,
            crl_files: Vec::new(),
        };
        let mut loaded = Ok(());
        let warnings = warnings_of(|| {
            loaded = TlsAcceptor::new(&spec, "in", &Metrics::new().root()).map(drop);
        });
        loaded?;
        let file = issued.cert_file.display().to_string();
        match warning {
            Some((what, name, not_after)) => assert!(
                warnings.iter().any(|warning| [what, name, not_after, &file]
                    .iter()
                    .all(|part| warning.contains(part))),
                "no warning that {file} {what}: {warnings:?}"
            ),
            None => assert!(warnings.is_empty(), "{warnings:?}"),
        }
    }
    Ok(())
}

/// A certificate is warned of while the proxy runs, not only when loaded (a proxy that ran
/// for months was never told): as it comes within 30 days, a week, of its end and past it, and
/// once a day while it stays so, never at every look. An expired CA root in a trust bundle is
/// warned of the same way (it was not at all).
#[test]
fn certificates_near_their_end_are_warned_of_while_the_proxy_runs() -> TestResult {
    use super::expiry::Expiry;
    const DAY: u64 = 86_400;
    // 2100-01-01T00:00:00Z, the served certificate's notAfter.
    const END: u64 = 4_102_444_800;
    let pki = Pki::new("expiry-running")?;
    let served = pki.issue_with("served", vec![dns("served.test")?], None, |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    })?;
    let old_root = pki.issue_with("old-root", vec![dns("old-root.test")?], None, |params| {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    })?;
    let bundle = pki.dir.join("bundle.pem");
    let bundle_pem =
        std::fs::read_to_string(&pki.ca_file)? + &std::fs::read_to_string(&old_root.cert_file)?;
    put(&bundle, bundle_pem.as_bytes())?;
    let cert = PemFile::read("cert_file", &served.cert_file)?;
    let trusted = PemFile::read("ca_file", &bundle)?;
    let expiry = Expiry::new(&Metrics::new().root(), true);
    let at = |seconds: u64| std::time::UNIX_EPOCH + Duration::from_secs(seconds);
    let (served_file, bundle_file) = (
        served.cert_file.display().to_string(),
        bundle.display().to_string(),
    );
    // The warnings of `file` saying `what`, among `warnings`.
    let count = |warnings: &[String], file: &str, what: &str| {
        warnings
            .iter()
            .filter(|warning| warning.contains(file) && warning.contains(what))
            .count()
    };
    let warnings = warnings_of(|| {
        expiry.loaded("cluster c", Some(&cert), [&trusted], at(END - 100 * DAY));
    });
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        count(
            &warnings,
            &bundle_file,
            "CA root the proxy trusts has expired"
        ),
        1
    );
    // Time passes without a change of the files: each step is one look of the watcher.
    let steps = [
        (END - 100 * DAY + 3600, None, false),
        (END - 29 * DAY, Some("expires within 30 days"), true),
        (END - 29 * DAY + 3600, None, false),
        (END - 28 * DAY, Some("expires within 30 days"), true),
        (END - 6 * DAY, Some("expires within a week"), true),
        (END - 6 * DAY + 60, None, false),
        (END + 60, Some("has expired"), true),
    ];
    for (now, served_warning, root_warning) in steps {
        let warnings = warnings_of(|| expiry.check("cluster c", at(now)));
        let expected = usize::from(served_warning.is_some()) + usize::from(root_warning);
        assert_eq!(warnings.len(), expected, "at {now}: {warnings:?}");
        if let Some(what) = served_warning {
            assert_eq!(
                count(&warnings, &served_file, what),
                1,
                "at {now}: {warnings:?}"
            );
        }
        if root_warning {
            assert_eq!(
                count(&warnings, &bundle_file, "has expired"),
                1,
                "at {now}: {warnings:?}"
            );
        }
    }
    Ok(())
}

/// Gives a certificate serial number `n` (as revocation lists name it).
fn serial(n: u64) -> impl FnOnce(&mut CertificateParams) {
    move |params| params.serial_number = Some(SerialNumber::from(n))
}

/// A client certificate that the listener's `crl_files` revoke is refused, another of the same
/// CA taken; the list rewritten on disk revokes that one too at the next handshake; a file that
/// holds no list is a config error of `crl_files`.
#[tokio::test]
async fn client_certificates_revoked_by_the_crl_files_are_refused() -> TestResult {
    let pki = Pki::new("crl")?;
    let serial = |n: u64| {
        move |params: &mut CertificateParams| {
            params.serial_number = Some(SerialNumber::from(n));
        }
    };
    let kept_id = "spiffe://cluster.local/ns/a/sa/kept";
    let kept = pki.issue_with("kept", vec![uri(kept_id)?], None, serial(1))?;
    let revoked_id = "spiffe://cluster.local/ns/a/sa/revoked";
    let revoked = pki.issue_with("revoked", vec![uri(revoked_id)?], None, serial(2))?;
    let crl_file = pki.dir.join("crl.pem");
    put(&crl_file, pki.revocation_list(&[2])?.as_bytes())?;
    let metrics = Metrics::new();
    let spec = mutual_tls(&pki, vec![crl_file.clone()])?;
    let acceptor = TlsAcceptor::new(&spec, "in", &metrics.root())?;
    assert_eq!(
        identity_through(&acceptor, &pki, &kept).await?,
        Ok(vec![kept_id.to_owned()])
    );
    let outcome = identity_through(&acceptor, &pki, &revoked).await?;
    assert!(
        matches!(&outcome, Err(err) if err.contains("Revoked")),
        "a revoked client certificate was accepted: {outcome:?}"
    );

    put(&crl_file, pki.revocation_list(&[1, 2])?.as_bytes())?;
    settle().await;
    assert_eq!(reloads(&metrics, "applied"), 1.0);
    let outcome = identity_through(&acceptor, &pki, &kept).await?;
    assert!(
        outcome.is_err(),
        "a certificate revoked by the reloaded list was accepted: {outcome:?}"
    );

    put(&crl_file, b"no list here\n")?;
    let Err(err) = TlsAcceptor::new(&spec, "in", &Metrics::new().root()) else {
        return Err("a CRL file without a list was taken".into());
    };
    assert_eq!(err.field, "crl_files");
    assert!(
        err.reason.contains(&crl_file.display().to_string()),
        "{err}"
    );
    Ok(())
}

/// An endpoint certificate that a cluster's `crl_files` revoke is refused, whether the cluster
/// checks the server name or expected SANs; another of the same CA is taken.
#[tokio::test]
async fn server_certificates_revoked_by_a_clusters_crl_files_are_refused() -> TestResult {
    let pki = Pki::new("cluster-crl")?;
    let names =
        || -> TestResult<Vec<SanType>> { Ok(vec![dns("provider.test")?, uri(PROVIDER_ID)?]) };
    let kept = serve(&pki.issue_with("kept", names()?, None, serial(1))?).await?;
    let revoked = serve(&pki.issue_with("revoked", names()?, None, serial(2))?).await?;
    let crl_file = pki.dir.join("crl.pem");
    put(&crl_file, pki.revocation_list(&[2])?.as_bytes())?;
    // By name; by SPIFFE id, the server name being the endpoint's address, which the
    // certificates do not carry.
    let checks = [
        (Some("provider.test".to_owned()), Vec::new()),
        (None, vec![PROVIDER_ID.to_owned()]),
    ];
    for (server_name, subject_alt_names) in checks {
        let spec = ClusterTlsSpec {
            ca_file: pki.ca_file.clone(),
            cert_file: None,
            key_file: None,
            server_name,
            subject_alt_names,
            crl_files: vec![crl_file.clone()],
            alpn_protocols: Vec::new(),
        };
        let outcome = connects(&spec, kept).await?;
        assert!(outcome.is_ok(), "{spec:?}: {outcome:?}");
        let outcome = connects(&spec, revoked).await?;
        assert!(
            matches!(&outcome, Err(err) if err.to_string().contains("Revoked")),
            "{spec:?}: a revoked certificate was taken: {outcome:?}"
        );
    }
    Ok(())
}

/// A CA bundle's `X509 CRL` blocks are revocation lists, as Envoy loads them with the bundle's
/// certificates: a server certificate (by name or by SPIFFE id) or a client certificate one of
/// them revokes is refused, another of the same CA taken. As in Envoy by default (its
/// `only_verify_leaf_cert_crl` unset), every certificate of the chain needs a list of its
/// issuer then: the root's list alone refuses a leaf an intermediate issued, and the
/// intermediate's list added takes it.
#[tokio::test]
async fn certificates_revoked_by_a_list_in_the_ca_bundle_are_refused() -> TestResult {
    let pki = Pki::new("bundled-crl")?;
    let names =
        || -> TestResult<Vec<SanType>> { Ok(vec![dns("provider.test")?, uri(PROVIDER_ID)?]) };
    let kept_cert = pki.issue_with("kept", names()?, None, serial(1))?;
    let revoked_cert = pki.issue_with("revoked", names()?, None, serial(2))?;
    let kept = serve(&kept_cert).await?;
    let revoked = serve(&revoked_cert).await?;
    let ca_pem = std::fs::read_to_string(&pki.ca_file)?;
    let bundle = pki.dir.join("bundle.pem");
    put(
        &bundle,
        format!("{ca_pem}{}", pki.revocation_list(&[2])?).as_bytes(),
    )?;
    let checks = [
        (Some("provider.test".to_owned()), Vec::new()),
        (None, vec![PROVIDER_ID.to_owned()]),
    ];
    for (server_name, subject_alt_names) in checks {
        let spec = ClusterTlsSpec {
            server_name,
            subject_alt_names,
            ..trusting(&bundle, &[])
        };
        let outcome = connects(&spec, kept).await?;
        assert!(outcome.is_ok(), "{spec:?}: {outcome:?}");
        let outcome = connects(&spec, revoked).await?;
        assert!(
            matches!(&outcome, Err(err) if err.to_string().contains("Revoked")),
            "{spec:?}: a certificate the bundle's list revokes was taken: {outcome:?}"
        );
    }

    let mut listener = mutual_tls(&pki, Vec::new())?;
    listener.client_ca_file = Some(bundle.clone());
    let acceptor = TlsAcceptor::new(&listener, "in", &Metrics::new().root())?;
    assert!(identity_through(&acceptor, &pki, &kept_cert).await?.is_ok());
    let outcome = identity_through(&acceptor, &pki, &revoked_cert).await?;
    assert!(
        matches!(&outcome, Err(err) if err.contains("Revoked")),
        "a client certificate the bundle's list revokes was accepted: {outcome:?}"
    );

    let intermediate = pki.intermediate()?;
    let issued = serve(&intermediate.issue("leaf", vec![dns("provider.test")?], None)?).await?;
    let spec = ClusterTlsSpec {
        server_name: Some("provider.test".to_owned()),
        ..trusting(&bundle, &[])
    };
    let outcome = connects(&spec, issued).await?;
    assert!(
        matches!(&outcome, Err(err) if err.to_string().contains("UnknownRevocationStatus")),
        "a leaf whose issuer has no list was taken: {outcome:?}"
    );
    put(
        &bundle,
        format!(
            "{ca_pem}{}{}",
            pki.revocation_list(&[2])?,
            intermediate.revocation_list(&[])?
        )
        .as_bytes(),
    )?;
    let outcome = connects(&spec, issued).await?;
    assert!(outcome.is_ok(), "with its issuer's list: {outcome:?}");
    Ok(())
}

/// A cluster's connectors with distinct TLS settings (its `tls`, an entry of its
/// `transport_socket_matches` presenting another certificate) write series of their own, the
/// entry's labelled with its match; entries whose settings equal earlier ones share their
/// connector (files read once), as does an entry shadowed by an earlier one with its match; an
/// update that moves an entry keeps its connector.
#[tokio::test]
async fn a_clusters_distinct_tls_settings_have_series_of_their_own_and_equal_ones_share_them()
-> TestResult {
    use crate::cluster::connectors::Connectors;
    use crate::config::{ClusterSpec, EndpointSpec};
    use crate::transport::Connector;

    let pki = Pki::new("transports")?;
    let default = pki.tls_until("default", 2100)?;
    let mesh = pki.tls_until("mesh", 2099)?;
    let shadowed = pki.tls_until("shadowed", 2098)?;
    let cluster = |first: &str| {
        ClusterSpec::from_yaml(&format!(
            "name: c
tls: {default}
transport_socket_matches:
  {first}
  - {{ match: {{ tlsMode: istio }}, tls: {mesh} }}
  - {{ match: {{ other: x }}, tls: {default} }}
  - {{ match: {{ third: x }}, tls: {mesh} }}
  - {{ match: {{ tlsMode: istio }}, tls: {shadowed} }}
"
        ))
    };
    let spec = cluster("")?;
    let metrics = Metrics::new();
    let scope = metrics.root().with_label("cluster", "c");
    let connectors = Connectors::new(&spec, None, &scope)?;
    let expiry =
        |labels: &str| series(&metrics, "tls_certificate_expiry_timestamp_seconds", labels);
    let rendered = metrics.render();
    // 2100-01-01T00:00:00Z and 2099-01-01T00:00:00Z.
    assert_eq!(expiry("cluster=\"c\""), 4_102_444_800.0, "{rendered}");
    assert_eq!(
        expiry("cluster=\"c\",transport=\"tlsMode=istio\""),
        4_070_908_800.0,
        "{rendered}"
    );
    let gauges = rendered
        .lines()
        .filter(|line| line.starts_with("metaprotocol_tls_certificate_expiry_timestamp_seconds{"))
        .count();
    assert_eq!(gauges, 2, "one series per distinct settings: {rendered}");
    let of =
        |spec: &ClusterSpec, connectors: &Connectors, key: &str, value: &str| -> TestResult<_> {
            let endpoint: EndpointSpec = serde_json::from_value(serde_json::json!({
                "address": "127.0.0.1:1",
                "transport_socket_match": { key: value },
            }))?;
            match connectors.of_endpoint(spec, &endpoint) {
                Connector::Tls(tls) => Ok(Arc::clone(tls)),
                Connector::Plain => Err("a plain connector".into()),
            }
        };
    let mesh_connector = of(&spec, &connectors, "tlsMode", "istio")?;
    let default_connector = of(&spec, &connectors, "none", "x")?;
    assert!(Arc::ptr_eq(
        &of(&spec, &connectors, "other", "x")?,
        &default_connector
    ));
    assert!(Arc::ptr_eq(
        &of(&spec, &connectors, "third", "x")?,
        &mesh_connector
    ));
    assert!(!Arc::ptr_eq(&default_connector, &mesh_connector));

    let moved = cluster("- { match: { none: x } }")?;
    let next = Connectors::new(&moved, Some((&spec, &connectors)), &scope)?;
    assert!(Arc::ptr_eq(
        &of(&moved, &next, "tlsMode", "istio")?,
        &mesh_connector
    ));
    assert!(Arc::ptr_eq(
        &of(&moved, &next, "other", "x")?,
        &default_connector
    ));
    Ok(())
}

/// Two entries of a cluster's `transport_socket_matches` whose matches differ only in where a
/// value's `,` and `=` fall (`{ a: "b,c=d" }` and `{ a: b, c: d }`) have connectors of their
/// own, so their series carry distinct `transport` labels: each entry's certificate expiry is
/// its own gauge.
#[tokio::test]
async fn entries_whose_matches_join_alike_write_series_of_their_own() -> TestResult {
    use crate::cluster::connectors::Connectors;
    use crate::config::ClusterSpec;

    let pki = Pki::new("joined-alike")?;
    let one = pki.tls_until("one", 2100)?;
    let two = pki.tls_until("two", 2099)?;
    let spec = ClusterSpec::from_yaml(&format!(
        "name: c
transport_socket_matches:
  - {{ match: {{ a: \"b,c=d\" }}, tls: {one} }}
  - {{ match: {{ a: b, c: d }}, tls: {two} }}
"
    ))?;
    let metrics = Metrics::new();
    let scope = metrics.root().with_label("cluster", "c");
    let _connectors = Connectors::new(&spec, None, &scope)?;
    let rendered = metrics.render();
    let gauges: Vec<&str> = rendered
        .lines()
        .filter(|line| line.starts_with("metaprotocol_tls_certificate_expiry_timestamp_seconds{"))
        .collect();
    assert_eq!(gauges.len(), 2, "one series per entry: {rendered}");
    // 2100-01-01T00:00:00Z and 2099-01-01T00:00:00Z.
    let expiries: Vec<&str> = gauges
        .iter()
        .filter_map(|line| line.rsplit(' ').next())
        .collect();
    assert!(
        expiries.contains(&"4102444800") && expiries.contains(&"4070908800"),
        "{rendered}"
    );
    // The exposition format writes each `\` of a label value as `\\`.
    assert!(
        rendered.contains(r#"transport="a=b\\,c\\=d"} 4102444800"#)
            && rendered.contains(r#"transport="a=b,c=d"} 4070908800"#),
        "{rendered}"
    );
    Ok(())
}

/// An endpoint's transport is chosen in Envoy's two passes: its own labels against every entry
/// of `transport_socket_matches` (an empty `match` taking an endpoint without labels), then its
/// locality's, then the cluster's `tls`. So an endpoint without labels takes an empty-match
/// entry listed after the one its locality's labels match, and one whose own labels no entry
/// matches takes the entry its locality's labels match: TLS in both cases here, where taking
/// one set of labels (the own if any, else the locality's) would connect in plain TCP.
#[tokio::test]
async fn an_endpoints_own_labels_are_tried_against_every_entry_before_its_localitys() -> TestResult
{
    use crate::cluster::connectors::Connectors;
    use crate::config::ClusterSpec;
    use crate::transport::Connector;

    let pki = Pki::new("two-passes")?;
    let issued = pki.issue("mesh", vec![dns("proxy.test")?], None)?;
    let mesh = format!(
        "{{ ca_file: {}, cert_file: {}, key_file: {} }}",
        pki.ca_file.display(),
        issued.cert_file.display(),
        issued.key_file.display()
    );
    // Whether each endpoint of the cluster of `entries` and `endpoints` is connected with TLS.
    let tls_to = |entries: &str, endpoints: &str| -> TestResult<Vec<bool>> {
        let spec = ClusterSpec::from_yaml(&format!(
            "name: c\ntransport_socket_matches: {entries}\nendpoints: {endpoints}\n"
        ))?;
        let metrics = Metrics::new();
        let connectors = Connectors::new(&spec, None, &metrics.root())?;
        Ok(spec
            .endpoints
            .iter()
            .map(|endpoint| matches!(connectors.of_endpoint(&spec, endpoint), Connector::Tls(_)))
            .collect())
    };

    // The empty match after the entry the locality's labels match.
    let chosen = tls_to(
        &format!("[ {{ match: {{ tlsMode: disabled }} }}, {{ match: {{}}, tls: {mesh} }} ]"),
        "[ { address: \"127.0.0.1:1\", locality_transport_socket_match: { tlsMode: disabled } },
           { address: \"127.0.0.1:2\", transport_socket_match: { tlsMode: disabled } } ]",
    )?;
    assert_eq!(chosen, [true, false]);

    // Own labels no entry matches, beside the locality's that one does.
    let chosen = tls_to(
        &format!("[ {{ match: {{ tlsMode: istio }}, tls: {mesh} }} ]"),
        "[ { address: \"127.0.0.1:1\", transport_socket_match: { version: v1 },
             locality_transport_socket_match: { tlsMode: istio } },
           { address: \"127.0.0.1:2\", transport_socket_match: { version: v1 },
             locality_transport_socket_match: { tlsMode: other } } ]",
    )?;
    assert_eq!(chosen, [true, false]);
    Ok(())
}

/// A CA bundle holding, beside the CA that issued the server's certificate, an X.509
/// certificate rustls cannot take as a trust anchor (its subject alternative names extension
/// holds no names) is taken without it, as Envoy takes every certificate of a bundle that
/// BoringSSL parses: the handshake succeeds, and a warning names the file and the certificate
/// left out. A block that is no X.509 certificate refuses the bundle whole, as in Envoy, and so
/// does a bundle with no certificate that can be a trust anchor.
#[tokio::test]
async fn a_ca_bundle_is_taken_without_the_certificates_that_cannot_be_anchors() -> TestResult {
    let pki = Pki::new("bundle-anchors")?;
    let server = pki.issue("server", vec![dns("server.test")?], None)?;
    let address = serve(&server).await?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "odd CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // An OCTET STRING where the extension's names are a SEQUENCE.
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            vec![4, 0],
        ));
    let odd = params.self_signed(&key)?.pem();
    let ca = std::fs::read_to_string(&pki.ca_file)?;
    let bundle = pki.dir.join("bundle.pem");
    put(&bundle, format!("{odd}{ca}").as_bytes())?;
    let spec = trusting(&bundle, &["server.test"]);
    let mut built = None;
    let warnings = warnings_of(|| {
        built = Some(TlsConnector::new(&spec, "c", &Metrics::new().root()));
    });
    let connector = match built {
        Some(Ok(connector)) => connector,
        Some(Err(err)) => return Err(format!("the bundle is refused: {err}").into()),
        None => return Err("not built".into()),
    };
    let handshake = connector.connect(address, Duration::from_secs(10)).await;
    assert!(handshake.is_ok(), "{handshake:?}");
    let bundle_name = bundle.display().to_string();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&bundle_name) && w.contains("certificate 1")),
        "{warnings:#?}"
    );

    let refused = |pem: String| -> TestResult<String> {
        put(&bundle, pem.as_bytes())?;
        match TlsConnector::new(&spec, "c", &Metrics::new().root()) {
            Ok(_) => Err("taken".into()),
            Err(err) => Ok(err.to_string()),
        }
    };
    let no_anchor = refused(odd.clone())?;
    assert!(
        no_anchor.contains("no certificate that can be a trust anchor"),
        "{no_anchor}"
    );
    // Base64 of bytes that are no DER certificate.
    let not_x509 = refused(format!(
        "{ca}-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n"
    ))?;
    assert!(
        not_x509.contains("certificate 2") && not_x509.contains("not an X.509 certificate"),
        "{not_x509}"
    );
    Ok(())
}

/// `der` as a PEM block labelled `label` (base64 in lines of 64, as OpenSSL writes them).
fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, byte)| {
            bits | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            text.push(if i <= chunk.len() {
                char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    let mut block = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        block.push_str(&String::from_utf8_lossy(line));
        block.push('\n');
    }
    block + &format!("-----END {label}-----\n")
}

/// OpenSSL's trust settings (`X509_CERT_AUX`) trusting a certificate for extended key usage
/// `1.3.6.1.5.5.7.3.<usage>` (1 servers, 2 clients), or rejecting it for that use.
fn trust_settings(usage: u8, reject: bool) -> Vec<u8> {
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, usage];
    // `trust` is a SEQUENCE OF, `reject` a [0] IMPLICIT SEQUENCE OF.
    let list = if reject { 0xa0 } else { 0x30 };
    [&[0x30, 0x0c, list, 0x0a][..], &oid].concat()
}

/// A CA bundle's `TRUSTED CERTIFICATE` blocks (OpenSSL's, the certificate followed by trust
/// settings, as `openssl x509 -trustout` writes them and some distributions' bundles hold) and
/// `X509 CERTIFICATE` blocks (the old label) are taken as BoringSSL reads them for Envoy: the
/// certificate is a trust anchor when its settings trust it for the use (verifying servers for
/// a cluster, clients for a listener) or say nothing of uses, and is left out with a warning
/// when they reject it for that use or trust it for others only, as BoringSSL then fails any
/// chain to it. Settings that cannot be read refuse the file, as BoringSSL's reader does.
#[tokio::test]
async fn a_ca_bundles_trusted_certificate_blocks_are_taken_as_their_trust_settings_say()
-> TestResult {
    use rustls_pki_types::pem::PemObject;

    let pki = Pki::new("trusted-blocks")?;
    let server = pki.issue("server", vec![dns("server.test")?], None)?;
    let address = serve(&server).await?;
    let ca = rustls_pki_types::CertificateDer::from_pem_file(&pki.ca_file)?;
    let bundle = pki.dir.join("bundle.pem");
    let spec = trusting(&bundle, &["server.test"]);
    // What a cluster trusting the bundle holding `pem` makes of it: the handshake's outcome
    // and the warnings, or why the bundle is refused.
    let cluster_with = |pem: String| -> TestResult<Result<(TlsConnector, Vec<String>), String>> {
        put(&bundle, pem.as_bytes())?;
        let mut built = None;
        let warnings =
            warnings_of(|| built = Some(TlsConnector::new(&spec, "c", &Metrics::new().root())));
        Ok(match built {
            Some(Ok(connector)) => Ok((connector, warnings)),
            Some(Err(err)) => Err(err.to_string()),
            None => Err("not built".to_owned()),
        })
    };
    let servers = trust_settings(1, false);
    let with_settings = [ca.as_ref(), &servers].concat();
    for (block, label) in [
        (
            pem_block("TRUSTED CERTIFICATE", &with_settings),
            "trusted for servers",
        ),
        (pem_block("TRUSTED CERTIFICATE", &ca), "without settings"),
        (pem_block("X509 CERTIFICATE", &ca), "under the old label"),
        (
            pem_block(
                "TRUSTED CERTIFICATE",
                &[ca.as_ref(), &trust_settings(2, false)].concat(),
            ),
            "trusted for clients only",
        ),
    ] {
        let (connector, warnings) = cluster_with(block)?
            .map_err(|err| format!("the bundle of a CA {label} is refused: {err}"))?;
        let handshake = connector.connect(address, Duration::from_secs(10)).await;
        assert!(handshake.is_ok(), "a CA {label}: {handshake:?}");
        assert!(warnings.is_empty(), "a CA {label}: {warnings:?}");
    }

    // Rejected for servers: left out, and the file with it.
    {
        let label = "rejected for servers";
        let settings = trust_settings(1, true);
        let block = pem_block("TRUSTED CERTIFICATE", &[ca.as_ref(), &settings].concat());
        let refused = cluster_with(block.clone())?.err();
        assert!(
            refused.as_deref().is_some_and(|err| err
                .contains("no certificate that can be a trust anchor")
                && err.contains("certificate 1")),
            "a CA {label}: {refused:?}"
        );
        // Beside a CA taken, it is left out with a warning naming it.
        let ca_pem = std::fs::read_to_string(&pki.ca_file)?;
        let (_, warnings) = cluster_with(format!("{ca_pem}{block}"))?
            .map_err(|err| format!("a bundle with a CA {label} is refused: {err}"))?;
        assert!(
            warnings.iter().any(|w| w.contains("certificate 2")),
            "a CA {label}: {warnings:#?}"
        );
    }

    // A listener verifying clients takes the CA its settings trust for clients, or for servers
    // only, and leaves out the one they reject for clients.
    let mut listener = mutual_tls(&pki, Vec::new())?;
    listener.client_ca_file = Some(bundle.clone());
    for (settings, taken) in [
        (trust_settings(2, false), true),
        (trust_settings(1, false), true),
        (trust_settings(2, true), false),
    ] {
        let block = pem_block("TRUSTED CERTIFICATE", &[ca.as_ref(), &settings].concat());
        put(&bundle, block.as_bytes())?;
        let built = TlsAcceptor::new(&listener, "in", &Metrics::new().root());
        assert_eq!(built.is_ok(), taken, "{settings:?}: {built:?}");
    }

    // Settings that are no `X509_CERT_AUX` (an INTEGER where a SEQUENCE is): refused.
    let unreadable = [ca.as_ref(), &[0x02, 0x01, 0x00]].concat();
    let refused = cluster_with(pem_block("TRUSTED CERTIFICATE", &unreadable))?.err();
    assert!(
        refused
            .as_deref()
            .is_some_and(|err| err.contains("certificate 1") && err.contains("trust settings")),
        "{refused:?}"
    );
    Ok(())
}

/// A CA bundle's certificate that is not self-signed (an intermediate) is a trust anchor, as
/// Envoy sets BoringSSL's `X509_V_FLAG_PARTIAL_CHAIN` on its trust store: a leaf it issued is
/// taken whether the server sends the intermediate after it or not, without the root.
#[tokio::test]
async fn an_intermediate_alone_in_a_ca_bundle_is_a_trust_anchor() -> TestResult {
    let pki = Pki::new("partial-chain")?;
    let intermediate = pki.intermediate()?;
    let server = intermediate.issue("server", vec![dns("server.test")?], None)?;
    let spec = trusting(&intermediate.ca_file, &["server.test"]);
    let outcome = connects(&spec, serve(&server).await?).await?;
    assert!(outcome.is_ok(), "with the intermediate sent: {outcome:?}");
    let leaf_only = std::fs::read_to_string(&server.cert_file)?.replace(&intermediate.chain, "");
    std::fs::write(&server.cert_file, leaf_only)?;
    let outcome = connects(&spec, serve(&server).await?).await?;
    assert!(outcome.is_ok(), "with the leaf alone: {outcome:?}");
    Ok(())
}

/// Every PEM file (certificates, keys, CA bundles, revocation lists) is read by one reader,
/// whose base64 is BoringSSL's: the last group padded with `=` (unpadded base64 is refused in
/// every file: it was taken in a `cert_file` and refused in a `ca_file`), its unused bits taken
/// whatever they are (they were refused in a `ca_file` only).
#[test]
fn every_pem_file_takes_the_base64_boringssl_takes() -> TestResult {
    use rustls_pki_types::pem::PemObject;

    let pki = Pki::new("base64")?;
    let ca = rustls_pki_types::CertificateDer::from_pem_file(&pki.ca_file)?;
    // Bytes after a certificate are not read: these make its base64 end in `==`.
    let mut der = ca.to_vec();
    while der.len() % 3 != 1 {
        der.push(0);
    }
    let padded = pem_block("CERTIFICATE", &der);
    let at = padded.find("==\n").ok_or("no padding")?;
    let unpadded = padded.replace("==\n", "\n");
    // The last character before the padding, with its four unused bits set.
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = ALPHABET.find(&padded[at - 1..at]).ok_or("not base64")?;
    let unused_bits = &ALPHABET[last | 15..=last | 15];
    let noncanonical = format!("{}{unused_bits}{}", &padded[..at - 1], &padded[at..]);
    assert_ne!(noncanonical, padded);
    let file = pki.dir.join("base64.pem");
    // Whether the file is taken as a certificate chain and as a CA bundle.
    let reads = |pem: &str| -> TestResult<(bool, bool)> {
        put(&file, pem.as_bytes())?;
        let read = PemFile::read("ca_file", &file)?;
        Ok((read.certificates().is_ok(), read.bundle().is_ok()))
    };
    assert_eq!(reads(&padded)?, (true, true), "padded");
    assert_eq!(reads(&noncanonical)?, (true, true), "with unused bits set");
    assert_eq!(reads(&unpadded)?, (false, false), "unpadded");
    Ok(())
}

/// The warning that a CA bundle's certificates are left out is logged once for the bundle's
/// contents, not at each build of settings trusting it: every cluster trusting the system's
/// bundle (and each xDS push that makes such clusters anew) builds its settings from it, and
/// would log the same warning again. A bundle whose contents change is warned of again.
#[test]
fn a_ca_bundles_left_out_certificates_are_warned_of_once_per_contents() -> TestResult {
    use rustls_pki_types::pem::PemObject;

    let pki = Pki::new("left-out-once")?;
    let ca_pem = std::fs::read_to_string(&pki.ca_file)?;
    let ca = rustls_pki_types::CertificateDer::from_pem_file(&pki.ca_file)?;
    let rejected = pem_block(
        "TRUSTED CERTIFICATE",
        &[ca.as_ref(), &trust_settings(1, true)].concat(),
    );
    let bundle = pki.dir.join("bundle.pem");
    let spec = trusting(&bundle, &["server.test"]);
    let left_out_warnings = |builds: usize| -> TestResult<usize> {
        let mut built = Ok(());
        let warnings = warnings_of(|| {
            for _ in 0..builds {
                if let Err(err) = TlsConnector::new(&spec, "c", &Metrics::new().root()) {
                    built = Err(err);
                }
            }
        });
        built?;
        Ok(warnings
            .iter()
            .filter(|w| w.contains("cannot be trust anchors"))
            .count())
    };
    put(&bundle, format!("{ca_pem}{rejected}").as_bytes())?;
    assert_eq!(
        left_out_warnings(3)?,
        1,
        "three clusters trusting one bundle"
    );
    put(&bundle, format!("{rejected}{ca_pem}").as_bytes())?;
    assert_eq!(left_out_warnings(2)?, 1, "the bundle changed");
    Ok(())
}
