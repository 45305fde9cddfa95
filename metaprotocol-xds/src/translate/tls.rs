//! A cluster's Envoy `transport_socket` as the engine's [`ClusterTlsSpec`].
//!
//! `raw_buffer` is plaintext. `tls` (an `UpstreamTlsContext`) maps onto the cluster's `tls`,
//! with its certificates from files: named by a `DataSource`'s `filename`, by a certificate
//! provider instance (gRPC's proxyless xDS, as Istio sends it to proxyless clients), which
//! `dynamic.xds.certificate_providers` resolves into files by its `instance_name`, or by an SDS
//! secret (as istiod sends it to sidecars: `default` and `ROOTCA`), which
//! `dynamic.xds.sds_secrets` resolves into files by its `name` (the engine has no SDS client:
//! the secret's `sds_config` is not read). A secret not in `sds_secrets` may name its own files,
//! as istiod names those a `DestinationRule`'s `MUTUAL` TLS mounts: `file-cert:<cert>~<key>`
//! (a client certificate) and `file-root:<ca>` (a CA), absolute paths only; an `sds_secrets`
//! entry of the same name wins, so that files mounted elsewhere can be mapped. The system's CAs,
//! `file-root:system` (istiod's name for them when a `DestinationRule` gives no
//! `caCertificates`), are the system's CA bundle (found when the client starts,
//! [`system_ca_file`]: the file `SSL_CERT_FILE` names, else where the system keeps it),
//! or its entry's file; a system without a bundle refuses it, saying where it was looked for.
//! Mapped:
//!
//! - the client certificate: `tls_certificates` (one, from files),
//!   `tls_certificate_provider_instance` (also in its deprecated spelling) or
//!   `tls_certificate_sds_secret_configs` (one secret), whose instance or secret must have
//!   `cert_file` and `key_file`;
//! - the CA: `trusted_ca` (a file), `ca_certificate_provider_instance`, the deprecated
//!   `validation_context_certificate_provider_instance`, or `validation_context_sds_secret_config`
//!   (each beside or inside a `combined_validation_context`), whose instance or secret must
//!   have `ca_file`. One is required: the engine verifies every endpoint;
//! - `match_subject_alt_names` (exact matchers, in their case) and
//!   `match_typed_subject_alt_names` (exact URI and DNS names) as `subject_alt_names`;
//! - `crl` (a file) as `crl_files`; `sni` as `server_name`;
//! - `tls_params` that allow TLS 1.2 and 1.3, what rustls speaks;
//! - `alpn_protocols` as `alpn_protocols` (offered; Istio's sidecars pick mutual TLS by them),
//!   within the config's bounds (each 1 to 255 bytes, 16 protocols, 1024 bytes together).
//!
//! Accepted and ignored: `max_session_keys` (tuning), `watched_directory` (files are re-read
//! when they change anyway), a certificate name within an instance (its files hold one
//! certificate).
//! Refused, naming the field: an instance or secret that is not mapped (naming it; for a
//! file-named secret, a relative path, a malformed name, or one of the other kind), inline or
//! environment data sources, other transport sockets, and whatever would relax or replace verification
//! (`allow_expired_certificate`, `trust_chain_verification`, custom validators, pinning by
//! hash or key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, transport_socket::ConfigType};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, TlsParameters,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use metaprotocol_router::config::{CertificateProviderSpec, ClusterTlsSpec};
use prost::{Message, Name};

use super::{InvalidResource, refuse_set};

/// Certificate files by the name a cluster's TLS gives them (`dynamic.xds.certificate_providers`,
/// `dynamic.xds.sds_secrets`).
pub type CertificateProviders = BTreeMap<String, CertificateProviderSpec>;

/// Where the certificates a cluster's TLS names are: the files of certificate provider
/// instances and of SDS secrets, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Certificate provider instances by instance name (`dynamic.xds.certificate_providers`).
    pub providers: CertificateProviders,
    /// SDS secrets by secret name (`dynamic.xds.sds_secrets`); a secret named after its files
    /// (`file-cert:`, `file-root:`) needs no entry.
    pub sds_secrets: CertificateProviders,
    /// The system's CA bundle, which SDS secret `file-root:system` stands for without an
    /// `sds_secrets` entry; `None` on a system without one (see [`system_ca_file`]).
    pub system_ca_file: Option<PathBuf>,
}

impl CertificateFiles {
    /// None: clusters whose TLS names certificates are refused.
    pub const NONE: Self = Self {
        providers: BTreeMap::new(),
        sds_secrets: BTreeMap::new(),
        system_ca_file: None,
    };

    fn instances(&self) -> Names<'_> {
        Names {
            files: &self.providers,
            section: "certificate_providers",
            name_field: "instance_name",
            file_names: None,
        }
    }

    fn secrets(&self) -> Names<'_> {
        Names {
            files: &self.sds_secrets,
            section: "sds_secrets",
            name_field: "name",
            file_names: Some(FileNames {
                system_ca_file: self.system_ca_file.as_deref(),
            }),
        }
    }
}

/// Certificate files by name, for the kind of name a field gives.
#[derive(Clone, Copy)]
struct Names<'a> {
    files: &'a CertificateProviders,
    /// Where the names are mapped: `certificate_providers`, `sds_secrets`.
    section: &'static str,
    /// The field of the name in a resource: `instance_name`, `name`.
    name_field: &'static str,
    /// Whether a name not mapped may name its own files (SDS secrets, as istiod names them),
    /// and how.
    file_names: Option<FileNames<'a>>,
}

/// What a certificate name that names its own files may stand for beyond the files it names.
#[derive(Clone, Copy)]
struct FileNames<'a> {
    /// The system's CA bundle, for `file-root:system`.
    system_ca_file: Option<&'a Path>,
}

impl<'a> Names<'a> {
    /// The files `name` stands for: those mapped to it, else those it names itself.
    fn find(&self, name: &str) -> Result<Found<'a>, String> {
        if let Some(files) = self.files.get(name) {
            return Ok(Found::Mapped(files));
        }
        if let Some(file_names) = self.file_names
            && let Some(files) = file_named_secret(name, file_names)?
        {
            return Ok(Found::FileNamed(files));
        }
        Err(format!("`{name}` is not in dynamic.xds.{}", self.section))
    }
}

/// What a certificate name stands for.
enum Found<'a> {
    /// The files mapped to it in the config.
    Mapped(&'a CertificateProviderSpec),
    /// The files an SDS secret's name gives.
    FileNamed(FileNamedSecret),
}

/// The files an SDS secret names itself, as istiod names the files a `DestinationRule`'s
/// `tls` mounts (Istio's `SdsCertificateConfig`), which pilot-agent serves from those files.
enum FileNamedSecret {
    /// `file-cert:<certificate path>~<key path>`: a client certificate.
    Certificate {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// `file-root:<CA path>`: a CA.
    Authority(PathBuf),
}

/// The prefix of a file-named client certificate secret.
const FILE_CERT: &str = "file-cert:";
/// The prefix of a file-named CA secret.
const FILE_ROOT: &str = "file-root:";
/// What separates the paths of a file-named secret.
const FILE_SEPARATOR: char = '~';
/// The file-named CA secret istiod gives for the system's CAs (no `caCertificates`).
const SYSTEM_ROOTS: &str = "file-root:system";

/// Where systems keep their CA bundle (PEM), in the order they are looked for, the places
/// pilot-agent looks at when it serves this secret to Envoy: Debian and Ubuntu (and Gentoo,
/// Arch, Alpine's `ca-certificates`), Fedora and RHEL 6, OpenSUSE, OpenELEC, CentOS and RHEL 7
/// and later, Alpine, FreeBSD, Talos Linux.
const SYSTEM_CA_FILES: [&str; 8] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/ssl/cert.pem",
    "/etc/ssl/certs/ca-certificates",
];

/// The environment variable that names the system's CA bundle in place of those places, as
/// OpenSSL, Go's `crypto/x509` and rustls-native-certs read it for the system's trust store
/// (pilot-agent's own lookup does not: the variable is the usual way to give TLS clients a
/// bundle, and this proxy has no pilot-agent beside it).
const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// The system's CA bundle: the file `SSL_CERT_FILE` names when it is set (not empty), whether
/// or not it is there yet (reading it then fails naming it, as OpenSSL takes the variable
/// without looking further), else the first of the places systems keep it that holds a
/// file (through symlinks), `None` when none does. `SSL_CERT_DIR`, a directory of
/// certificates rather than a bundle, is not read: pilot-agent serves this secret to an Envoy
/// sidecar from the first of those files alone, and Envoy reads it as one bundle, never a
/// directory.
pub fn system_ca_file() -> Option<PathBuf> {
    match std::env::var_os(SSL_CERT_FILE).filter(|named| !named.is_empty()) {
        Some(named) => Some(PathBuf::from(named)),
        None => SYSTEM_CA_FILES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.metadata().is_ok_and(|m| m.is_file())),
    }
}

/// The files SDS secret `name` names itself, `None` when it is not a file name. Paths must be
/// absolute: a relative one would be read from wherever the proxy was started.
fn file_named_secret(
    name: &str,
    file_names: FileNames<'_>,
) -> Result<Option<FileNamedSecret>, String> {
    if let Some(paths) = name.strip_prefix(FILE_CERT) {
        let mut parts = paths.split(FILE_SEPARATOR);
        let (Some(cert), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "`{name}` is not `{FILE_CERT}<certificate path>{FILE_SEPARATOR}<key path>`"
            ));
        };
        return Ok(Some(FileNamedSecret::Certificate {
            cert_file: absolute(name, cert)?,
            key_file: absolute(name, key)?,
        }));
    }
    if let Some(path) = name.strip_prefix(FILE_ROOT) {
        if name == SYSTEM_ROOTS {
            return match file_names.system_ca_file {
                Some(bundle) => Ok(Some(FileNamedSecret::Authority(bundle.to_owned()))),
                None => Err(format!(
                    "`{name}` (the system's CAs): no system CA bundle was found when the xDS \
                     client started ({SSL_CERT_FILE} is not set, and none is at {}); map it to \
                     a CA file in dynamic.xds.sds_secrets",
                    SYSTEM_CA_FILES.join(", ")
                )),
            };
        }
        if path.contains(FILE_SEPARATOR) {
            return Err(format!("`{name}` is not `{FILE_ROOT}<CA path>`"));
        }
        return Ok(Some(FileNamedSecret::Authority(absolute(name, path)?)));
    }
    Ok(None)
}

/// `path`, which the secret `name` gives, if it is absolute.
fn absolute(name: &str, path: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!(
            "`{name}` names `{}`, not an absolute path",
            path.display()
        ))
    }
}

/// Translates a cluster's `transport_socket`: `None` for plaintext.
pub(super) fn transport_socket(
    socket: &TransportSocket,
    providers: &CertificateFiles,
) -> Result<Option<ClusterTlsSpec>, InvalidResource> {
    let Some(ConfigType::TypedConfig(config)) = &socket.config_type else {
        return Err(InvalidResource::new("typed_config", "is required"));
    };
    if config.type_url == RawBuffer::type_url() {
        return Ok(None);
    }
    if config.type_url != UpstreamTlsContext::type_url() {
        return Err(InvalidResource::new(
            "typed_config",
            format!(
                "`{}` is not supported by metaprotocol-rs (only `tls` and `raw_buffer` are)",
                config.type_url
            ),
        ));
    }
    let context = UpstreamTlsContext::decode(config.value.as_slice())
        .map_err(|err| InvalidResource::new("typed_config", err.to_string()))?;
    upstream_tls_context(&context, providers)
        .map(Some)
        .map_err(|e| e.within("typed_config"))
}

fn upstream_tls_context(
    context: &UpstreamTlsContext,
    providers: &CertificateFiles,
) -> Result<ClusterTlsSpec, InvalidResource> {
    refuse_set!(
        "",
        context,
        [
            auto_host_sni,
            auto_sni_san_validation,
            allow_renegotiation,
            enforce_rsa_key_usage,
        ]
    );
    let common = context
        .common_tls_context
        .as_ref()
        .ok_or_else(|| InvalidResource::new("common_tls_context", "is required"))?;
    let mut spec =
        common_tls_context(common, providers).map_err(|e| e.within("common_tls_context"))?;
    if !context.sni.is_empty() {
        spec.server_name = Some(context.sni.clone());
    }
    Ok(spec)
}

fn common_tls_context(
    common: &CommonTlsContext,
    providers: &CertificateFiles,
) -> Result<ClusterTlsSpec, InvalidResource> {
    refuse_set!(
        "",
        common,
        [
            custom_tls_certificate_selector,
            tls_certificate_certificate_provider,
            custom_handshaker,
            key_log,
        ]
    );
    if let Some(params) = &common.tls_params {
        tls_params(params).map_err(|e| e.within("tls_params"))?;
    }
    let mut client = Vec::new();
    if !common.tls_certificates.is_empty() {
        client.push(("tls_certificates", certificate_files(common)?));
    }
    if let Some(instance) = &common.tls_certificate_provider_instance {
        let at = "tls_certificate_provider_instance";
        client.push((
            at,
            identity(providers.instances(), &instance.instance_name, at)?,
        ));
    }
    #[allow(deprecated, reason = "Istio sends the deprecated spelling")]
    if let Some(instance) = &common.tls_certificate_certificate_provider_instance {
        let at = "tls_certificate_certificate_provider_instance";
        client.push((
            at,
            identity(providers.instances(), &instance.instance_name, at)?,
        ));
    }
    match common.tls_certificate_sds_secret_configs.as_slice() {
        [] => {}
        [secret] => {
            let at = "tls_certificate_sds_secret_configs[0]";
            client.push((
                at,
                identity(providers.secrets(), secret_name(secret, at)?, at)?,
            ));
        }
        [_, _, ..] => {
            return Err(InvalidResource::new(
                "tls_certificate_sds_secret_configs[1]",
                "a second client certificate: give one",
            ));
        }
    }
    let (cert_file, key_file) = match client.as_slice() {
        [] => (None, None),
        [(_, (cert, key))] => (Some(cert.clone()), Some(key.clone())),
        [_, (field, _), ..] => {
            return Err(InvalidResource::new(
                *field,
                "a second client certificate: give one",
            ));
        }
    };
    let validation = validation(common.validation_context_type.as_ref(), providers)?;
    // Bounded as the config bounds a cluster's: every cluster holds the list, and every
    // handshake carries it.
    ClusterTlsSpec::check_alpn_protocols(&common.alpn_protocols)
        .map_err(|err| InvalidResource::new(err.field, err.reason))?;
    Ok(ClusterTlsSpec {
        ca_file: validation.ca_file,
        cert_file,
        key_file,
        server_name: None,
        subject_alt_names: validation.subject_alt_names,
        crl_files: validation.crl_files,
        alpn_protocols: common.alpn_protocols.clone(),
    })
}

/// Protocol versions are accepted when they allow both TLS 1.2 and 1.3 (what rustls speaks);
/// cipher suites, curves and algorithms are rustls's own.
fn tls_params(params: &TlsParameters) -> Result<(), InvalidResource> {
    refuse_set!(
        "",
        params,
        [
            cipher_suites,
            ecdh_curves,
            signature_algorithms,
            compliance_policies,
        ]
    );
    let version = |value: i32| TlsProtocol::try_from(value).unwrap_or(TlsProtocol::TlsAuto);
    let minimum = version(params.tls_minimum_protocol_version);
    if minimum == TlsProtocol::TlSv13 {
        return Err(InvalidResource::new(
            "tls_minimum_protocol_version",
            "metaprotocol-rs speaks TLS 1.2 and 1.3 to endpoints",
        ));
    }
    let maximum = version(params.tls_maximum_protocol_version);
    if !matches!(maximum, TlsProtocol::TlsAuto | TlsProtocol::TlSv13) {
        return Err(InvalidResource::new(
            "tls_maximum_protocol_version",
            "metaprotocol-rs speaks TLS 1.2 and 1.3 to endpoints",
        ));
    }
    Ok(())
}

/// The one `tls_certificates` entry's files.
fn certificate_files(common: &CommonTlsContext) -> Result<(PathBuf, PathBuf), InvalidResource> {
    let [certificate] = common.tls_certificates.as_slice() else {
        return Err(InvalidResource::new(
            "tls_certificates[1]",
            "a second client certificate: give one",
        ));
    };
    let at = "tls_certificates[0]";
    refuse_set!(
        at,
        certificate,
        [
            pkcs12,
            private_key_provider,
            password,
            ocsp_staple,
            signed_certificate_timestamp,
            tls_params,
        ]
    );
    let file = |source: &Option<DataSource>, field: &str| {
        let field = format!("{at}.{field}");
        let source = source
            .as_ref()
            .ok_or_else(|| InvalidResource::new(&field, "is required"))?;
        file_name(source).map_err(|e| e.within(&field))
    };
    Ok((
        file(&certificate.certificate_chain, "certificate_chain")?,
        file(&certificate.private_key, "private_key")?,
    ))
}

/// A data source's file; inline data and environment variables are refused.
fn file_name(source: &DataSource) -> Result<PathBuf, InvalidResource> {
    match &source.specifier {
        Some(Specifier::Filename(name)) if !name.is_empty() => Ok(PathBuf::from(name)),
        _ => Err(InvalidResource::new(
            "",
            "metaprotocol-rs reads certificates from files only (`filename`)",
        )),
    }
}

/// The name of the SDS secret `secret`, which `field` gives.
fn secret_name<'a>(secret: &'a SdsSecretConfig, field: &str) -> Result<&'a str, InvalidResource> {
    if secret.name.is_empty() {
        return Err(InvalidResource::new(
            format!("{field}.name"),
            "is required: metaprotocol-rs maps SDS secrets to files by name",
        ));
    }
    Ok(&secret.name)
}

/// The client certificate's files named `name` among `names`, which `field` gives.
fn identity(
    names: Names<'_>,
    name: &str,
    field: &str,
) -> Result<(PathBuf, PathBuf), InvalidResource> {
    let refused =
        |reason: String| InvalidResource::new(format!("{field}.{}", names.name_field), reason);
    match names.find(name).map_err(refused)? {
        Found::Mapped(CertificateProviderSpec {
            cert_file: Some(cert),
            key_file: Some(key),
            ..
        }) => Ok((cert.clone(), key.clone())),
        Found::Mapped(_) => Err(refused(format!(
            "`{name}` has no `cert_file` and `key_file` in dynamic.xds.{}",
            names.section
        ))),
        Found::FileNamed(FileNamedSecret::Certificate {
            cert_file,
            key_file,
        }) => Ok((cert_file, key_file)),
        Found::FileNamed(FileNamedSecret::Authority(_)) => Err(refused(format!(
            "`{name}` names a CA, not a client certificate"
        ))),
    }
}

/// The CA file named `name` among `names`, which `field` gives.
fn authority(names: Names<'_>, name: &str, field: &str) -> Result<PathBuf, InvalidResource> {
    let refused =
        |reason: String| InvalidResource::new(format!("{field}.{}", names.name_field), reason);
    match names.find(name).map_err(refused)? {
        Found::Mapped(files) => files.ca_file.clone().ok_or_else(|| {
            refused(format!(
                "`{name}` has no `ca_file` in dynamic.xds.{}",
                names.section
            ))
        }),
        Found::FileNamed(FileNamedSecret::Authority(ca_file)) => Ok(ca_file),
        Found::FileNamed(FileNamedSecret::Certificate { .. }) => Err(refused(format!(
            "`{name}` names a client certificate, not a CA"
        ))),
    }
}

/// How endpoints are verified.
struct Validation {
    ca_file: PathBuf,
    subject_alt_names: Vec<String>,
    crl_files: Vec<PathBuf>,
}

fn validation(
    context: Option<&ValidationContextType>,
    providers: &CertificateFiles,
) -> Result<Validation, InvalidResource> {
    let no_ca = || {
        InvalidResource::new(
            "validation_context_type",
            "a CA is required: metaprotocol-rs verifies every endpoint",
        )
    };
    #[allow(deprecated, reason = "Istio sends the deprecated spellings")]
    match context {
        None => Err(no_ca()),
        Some(ValidationContextType::ValidationContext(context)) => {
            validation_context(context, None, providers)
                .map_err(|e| e.within("validation_context"))?
                .ok_or_else(no_ca)
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let at = "combined_validation_context";
            refuse_set!(at, combined, [validation_context_certificate_provider]);
            let mut ca = None;
            if let Some(instance) = &combined.validation_context_certificate_provider_instance {
                let field = "validation_context_certificate_provider_instance";
                let file = authority(
                    providers.instances(),
                    &instance.instance_name,
                    &format!("{at}.{field}"),
                )?;
                ca = Some((field, file));
            }
            if let Some(secret) = &combined.validation_context_sds_secret_config {
                let field = "validation_context_sds_secret_config";
                if ca.is_some() {
                    return Err(InvalidResource::new(
                        format!("{at}.{field}"),
                        "a second CA: give one",
                    ));
                }
                let at = format!("{at}.{field}");
                let file = authority(providers.secrets(), secret_name(secret, &at)?, &at)?;
                ca = Some((field, file));
            }
            let default = combined
                .default_validation_context
                .clone()
                .unwrap_or_default();
            validation_context(&default, ca, providers)
                .map_err(|e| e.within(&format!("{at}.default_validation_context")))?
                .ok_or_else(no_ca)
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(instance)) => {
            let field = "validation_context_certificate_provider_instance";
            Ok(Validation {
                ca_file: authority(providers.instances(), &instance.instance_name, field)?,
                subject_alt_names: Vec::new(),
                crl_files: Vec::new(),
            })
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(secret)) => {
            let field = "validation_context_sds_secret_config";
            Ok(Validation {
                ca_file: authority(providers.secrets(), secret_name(secret, field)?, field)?,
                subject_alt_names: Vec::new(),
                crl_files: Vec::new(),
            })
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => Err(
            InvalidResource::unsupported("validation_context_certificate_provider"),
        ),
    }
}

/// A validation context, with the CA `ca` already found beside it (a combined context's
/// instance or secret, with the field naming it); `None` when it names no CA.
fn validation_context(
    context: &CertificateValidationContext,
    ca: Option<(&'static str, PathBuf)>,
    providers: &CertificateFiles,
) -> Result<Option<Validation>, InvalidResource> {
    refuse_set!(
        "",
        context,
        [
            system_root_certs,
            verify_certificate_spki,
            verify_certificate_hash,
            require_signed_certificate_timestamp,
            allow_expired_certificate,
            trust_chain_verification,
            custom_validator_config,
            only_verify_leaf_cert_crl,
        ]
    );
    let mut authorities = Vec::new();
    authorities.extend(ca);
    if let Some(source) = &context.trusted_ca {
        authorities.push((
            "trusted_ca",
            file_name(source).map_err(|e| e.within("trusted_ca"))?,
        ));
    }
    if let Some(instance) = &context.ca_certificate_provider_instance {
        let field = "ca_certificate_provider_instance";
        authorities.push((
            field,
            authority(providers.instances(), &instance.instance_name, field)?,
        ));
    }
    let ca_file = match authorities.as_slice() {
        [] => return Ok(None),
        [(_, ca)] => ca.clone(),
        [_, (field, _), ..] => {
            return Err(InvalidResource::new(*field, "a second CA: give one"));
        }
    };
    let mut subject_alt_names = Vec::new();
    #[allow(deprecated, reason = "Istio sends the deprecated spelling")]
    let untyped = &context.match_subject_alt_names;
    for (i, matcher) in untyped.iter().enumerate() {
        subject_alt_names
            .push(exact(matcher).map_err(|e| e.within(&format!("match_subject_alt_names[{i}]")))?);
    }
    for (i, matcher) in context.match_typed_subject_alt_names.iter().enumerate() {
        let at = format!("match_typed_subject_alt_names[{i}]");
        let name = exact(&matcher.matcher.clone().unwrap_or_default())
            .map_err(|e| e.within(&format!("{at}.matcher")))?;
        // The engine tells a URI SAN from a DNS SAN by the `:` a URI has.
        let fits = match SanType::try_from(matcher.san_type) {
            Ok(SanType::Uri) => name.contains(':'),
            Ok(SanType::Dns) => !name.contains(':'),
            _ => false,
        };
        if !fits {
            return Err(InvalidResource::new(
                format!("{at}.san_type"),
                "metaprotocol-rs matches URI names (with a scheme) and DNS names only",
            ));
        }
        subject_alt_names.push(name);
    }
    let mut crl_files = Vec::new();
    if let Some(crl) = &context.crl {
        crl_files.push(file_name(crl).map_err(|e| e.within("crl"))?);
    }
    Ok(Some(Validation {
        ca_file,
        subject_alt_names,
        crl_files,
    }))
}

/// An exact, case-sensitive name matcher's name: the engine matches names exactly.
fn exact(matcher: &StringMatcher) -> Result<String, InvalidResource> {
    match &matcher.match_pattern {
        Some(MatchPattern::Exact(name)) if !name.is_empty() && !matcher.ignore_case => {
            Ok(name.clone())
        }
        _ => Err(InvalidResource::new(
            "",
            "metaprotocol-rs matches names exactly (`exact`, without `ignore_case`)",
        )),
    }
}
