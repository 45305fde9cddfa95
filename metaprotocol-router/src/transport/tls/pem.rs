//! Reading PEM files into what rustls takes: certificate chains, private keys, trust roots.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use metaprotocol_core::read_regular_file;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Tag};

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

    /// The file's certificates (its `CERTIFICATE` blocks), in file order; at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let mut certs = Vec::new();
        for block in blocks(&self.bytes) {
            let block = block.map_err(|why| self.unreadable(&why))?;
            if block.label == CERTIFICATE_LABELS[0].as_bytes() {
                certs.push(CertificateDer::from(block.der));
            }
        }
        if certs.is_empty() {
            return Err(ConfigError::new(
                self.field,
                format!("{} holds no PEM certificate", self.path.display()),
            ));
        }
        Ok(certs)
    }

    /// The file's private key: its first block labelled `PRIVATE KEY` (PKCS#8),
    /// `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, ConfigError> {
        for block in blocks(&self.bytes) {
            let block = block.map_err(|why| self.unreadable(&why))?;
            let key = match block.label {
                b"PRIVATE KEY" => PrivateKeyDer::Pkcs8(block.der.into()),
                b"RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(block.der.into()),
                b"EC PRIVATE KEY" => PrivateKeyDer::Sec1(block.der.into()),
                _ => continue,
            };
            return Ok(key);
        }
        Err(ConfigError::new(
            self.field,
            format!("{} holds no PEM private key", self.path.display()),
        ))
    }

    /// The file as a CA bundle: its certificates, in file order (at least one), and its
    /// certificate revocation lists. Read as BoringSSL reads a bundle for Envoy
    /// (`PEM_X509_INFO_read_bio`): blocks labelled `CERTIFICATE`, its old label
    /// `X509 CERTIFICATE`, OpenSSL's `TRUSTED CERTIFICATE` (the certificate followed by its
    /// trust settings), and `X509 CRL`; other blocks are passed over. A certificate block that
    /// does not start with a DER element, or whose trust settings cannot be read, refuses the
    /// file, as it makes BoringSSL's reader fail.
    pub fn bundle(&self) -> Result<Bundle, ConfigError> {
        let mut authorities = Vec::new();
        let mut revocation_lists = Vec::new();
        for block in blocks(&self.bytes) {
            let block = block.map_err(|why| self.unreadable(&why))?;
            if block.label == REVOCATION_LIST.as_bytes() {
                revocation_lists.push(CertificateRevocationListDer::from(block.der));
                continue;
            }
            let trusted = block.label == TRUSTED_CERTIFICATE.as_bytes();
            if !trusted
                && !CERTIFICATE_LABELS
                    .iter()
                    .any(|l| l.as_bytes() == block.label)
            {
                continue;
            }
            // Counted from 1, as a reader counts the file's blocks.
            let number = authorities.len() + 1;
            let refused = |what: &str| {
                ConfigError::new(
                    self.field,
                    format!("{}: certificate {number} {what}", self.path.display()),
                )
            };
            let (settings, certificate) = match Any::from_der(&block.der) {
                Ok((settings, _)) => (settings, block.der.len() - settings.len()),
                Err(_) => return Err(refused("is not an X.509 certificate")),
            };
            let trust = match (trusted, settings) {
                // A plain block's bytes after the certificate are not read, as BoringSSL's
                // reader reads one element of it.
                (false, _) | (true, []) => TrustSettings::default(),
                (true, settings) => TrustSettings::read(settings)
                    .ok_or_else(|| refused("has trust settings that cannot be read"))?,
            };
            let mut der = block.der;
            der.truncate(certificate);
            authorities.push(Authority {
                number,
                der: CertificateDer::from(der),
                trust,
            });
        }
        if authorities.is_empty() {
            return Err(ConfigError::new(
                self.field,
                format!("{} holds no PEM certificate", self.path.display()),
            ));
        }
        Ok(Bundle {
            authorities,
            revocation_lists,
        })
    }

    /// The file's certificates as trust roots for verifying `peers`, with its revocation
    /// lists. As Envoy loads a CA bundle (see [`PemFile::bundle`]), a block that is no X.509
    /// certificate refuses the file, while one that is but cannot be a trust anchor here is
    /// left out with a warning naming it: an extension rustls reads and finds malformed (which
    /// BoringSSL reads only when it uses it), or trust settings that reject it for verifying
    /// `peers` (BoringSSL fails every chain to it then). Any other certificate is an anchor,
    /// self-signed or not, as in Envoy (see [`TrustSettings::rejects`]). One odd certificate in
    /// a system or corporate bundle does not refuse the others. A file with no certificate that
    /// can be an anchor is refused.
    pub fn trust(&self, peers: Peers) -> Result<Trust, ConfigError> {
        let bundle = self.bundle()?;
        let mut roots = RootCertStore::empty();
        let mut left_out = Vec::new();
        for authority in bundle.authorities {
            let number = authority.number;
            if authority.trust.rejects(peers.usage()) {
                left_out.push(format!(
                    "certificate {number}: its trust settings reject it for verifying {}",
                    peers.name()
                ));
                continue;
            }
            // Only a certificate webpki refuses is parsed again, to tell a block that is no
            // X.509 certificate (refusing the file, as BoringSSL does) from one it can read but
            // not trust (left out): a stricter parser never refuses what webpki takes.
            let Err(err) = roots.add(CertificateDer::from(authority.der.as_ref())) else {
                continue;
            };
            if x509_parser::parse_x509_certificate(&authority.der).is_err() {
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
            let left_out = left_out.join("; ");
            if first_warning_of(&self.path, &self.bytes, &left_out) {
                tracing::warn!(
                    field = self.field,
                    file = %self.path.display(),
                    left_out,
                    "CA certificates that cannot be trust anchors are left out; the file's others are trusted"
                );
            } else {
                tracing::debug!(field = self.field, file = %self.path.display(), left_out, "CA certificates that cannot be trust anchors are left out (warned of before)");
            }
        }
        Ok(Trust {
            roots,
            revocation_lists: bundle.revocation_lists,
        })
    }

    /// The file's certificate revocation lists; at least one.
    pub fn revocation_lists(
        &self,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
        let mut crls = Vec::new();
        for block in blocks(&self.bytes) {
            let block = block.map_err(|why| self.unreadable(&why))?;
            if block.label == REVOCATION_LIST.as_bytes() {
                crls.push(CertificateRevocationListDer::from(block.der));
            }
        }
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

    /// The error of a file whose PEM cannot be read, for reason `why`.
    fn unreadable(&self, why: &str) -> ConfigError {
        ConfigError::new(
            self.field,
            format!("cannot read {}: {why}", self.path.display()),
        )
    }
}

/// A PEM block of a file: its label and the bytes its base64 encodes.
struct Block<'a> {
    label: &'a [u8],
    der: Vec<u8>,
}

/// The PEM blocks of `text`, in file order, read as BoringSSL's PEM reader (`PEM_read_bio`)
/// reads every file for Envoy, so that certificates, keys, CA bundles and revocation lists
/// take the same text: a block runs from a line `-----BEGIN <label>-----` to the line
/// `-----END <label>-----` (white space at a line's end ignored), lines outside blocks are
/// passed over, and a block's lines are base64 that [`decode_base64`] reads. An error says
/// what is wrong with a block; the blocks after it are not read.
fn blocks(text: &[u8]) -> impl Iterator<Item = Result<Block<'_>, String>> {
    let mut lines = text
        .split(|&byte| byte == b'\n')
        .map(<[u8]>::trim_ascii_end);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let label = lines
            .by_ref()
            .find_map(|line| line.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----"))?;
        let name = String::from_utf8_lossy(label);
        let mut base64 = Vec::new();
        for line in lines.by_ref() {
            let Some(end) = line.strip_prefix(b"-----END ") else {
                base64.extend(
                    line.iter()
                        .filter(|&&byte| !matches!(byte, b' ' | b'\t' | b'\r')),
                );
                continue;
            };
            let block = if end.strip_suffix(b"-----") != Some(label) {
                Err(format!("a `{name}` block ends with another label"))
            } else {
                decode_base64(&base64)
                    .map(|der| Block { label, der })
                    .ok_or_else(|| format!("a `{name}` block holds malformed base64"))
            };
            failed = block.is_err();
            return Some(block);
        }
        failed = true;
        Some(Err(format!("a `{name}` block has no end line")))
    })
}

/// The bytes of `text` (base64 without white space), decoded as BoringSSL decodes a PEM
/// block (`EVP_DecodeUpdate` and `EVP_DecodeFinal`): in groups of four characters, padded with
/// `=` to a whole group (BoringSSL refuses unpadded base64, which rustls' reader takes), only
/// the last group padded; the unused bits of a padded group need not be zero (BoringSSL takes
/// them, as OpenSSL and Go do, where x509-parser's reader refused them). `None` if it is not
/// that.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    PEM_BASE64.decode(text).ok()
}

/// Base64 as BoringSSL's PEM reader decodes it (see [`decode_base64`]).
const PEM_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// The most CA bundles [`first_warning_of`] remembers: past them, the one warned of longest
/// ago is forgotten (warned of again if it comes again).
const MAX_WARNED_BUNDLES: usize = 256;

/// The CA bundles whose left-out certificates were warned of, each by a hash of its path, its
/// contents and what was left out, oldest first.
static WARNED_BUNDLES: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());

/// True the first time the bundle at `path` holding `contents` leaves out `left_out`. Every
/// cluster trusting a bundle (the system's, say) builds its settings from it, and each xDS push
/// may make such clusters anew: the warning is logged once for what it says, and again when the
/// bundle changes.
fn first_warning_of(path: &Path, contents: &[u8], left_out: &str) -> bool {
    let mut hasher = DefaultHasher::new();
    (path, contents, left_out).hash(&mut hasher);
    let key = hasher.finish();
    let mut warned = WARNED_BUNDLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.contains(&key) {
        return false;
    }
    if warned.len() >= MAX_WARNED_BUNDLES {
        warned.pop_front();
    }
    warned.push_back(key);
    true
}

/// The label of OpenSSL's PEM blocks that hold a certificate followed by its trust settings.
const TRUSTED_CERTIFICATE: &str = "TRUSTED CERTIFICATE";

/// The label of PEM blocks that hold a certificate revocation list.
const REVOCATION_LIST: &str = "X509 CRL";

/// The labels of PEM blocks that hold a certificate alone: `CERTIFICATE`, and the old label
/// BoringSSL still reads.
const CERTIFICATE_LABELS: [&str; 2] = ["CERTIFICATE", "X509 CERTIFICATE"];

/// What a CA bundle holds: certificates and certificate revocation lists.
pub(crate) struct Bundle {
    /// Its certificates, in file order; at least one.
    pub authorities: Vec<Authority>,
    /// Its certificate revocation lists, in file order.
    pub revocation_lists: Vec<CertificateRevocationListDer<'static>>,
}

/// A CA bundle as a verifier takes it: its trust anchors for verifying some peers, and the
/// revocation lists it holds, which Envoy loads with its certificates and checks peers
/// against.
pub(crate) struct Trust {
    /// The certificates that can be trust anchors for the peers.
    pub roots: RootCertStore,
    /// The bundle's certificate revocation lists, in file order.
    pub revocation_lists: Vec<CertificateRevocationListDer<'static>>,
}

/// A certificate of a CA bundle.
pub(crate) struct Authority {
    /// Its place among the file's certificates, counted from 1.
    number: usize,
    der: CertificateDer<'static>,
    trust: TrustSettings,
}

impl Authority {
    /// The certificate (without its trust settings).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

/// Whose certificates a CA bundle verifies: a cluster's servers (`ca_file`) or a listener's
/// clients (`client_ca_file`). Trust settings trust a CA for either by extended key usage, and
/// BoringSSL verifies a server's chain for `serverAuth`, a client's for `clientAuth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peers {
    /// Servers the proxy connects to.
    Servers,
    /// Clients that connect to the proxy.
    Clients,
}

impl Peers {
    /// The contents of the DER object identifier of the extended key usage verified:
    /// `serverAuth` (1.3.6.1.5.5.7.3.1), `clientAuth` (1.3.6.1.5.5.7.3.2).
    fn usage(self) -> &'static [u8] {
        match self {
            Self::Servers => &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01],
            Self::Clients => &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02],
        }
    }

    /// What they are called in messages.
    fn name(self) -> &'static str {
        match self {
            Self::Servers => "servers",
            Self::Clients => "clients",
        }
    }
}

/// OpenSSL's trust settings of a certificate (`X509_CERT_AUX`), as far as they decide whether
/// it is a trust anchor here: the extended key usages it is rejected for, by the contents of
/// their object identifiers (see [`TrustSettings::rejects`]).
#[derive(Debug, Default)]
struct TrustSettings {
    rejected: Vec<Vec<u8>>,
}

impl TrustSettings {
    /// Reads the DER of `SEQUENCE { trust SEQUENCE OF OID OPTIONAL, reject [0] IMPLICIT
    /// SEQUENCE OF OID OPTIONAL, alias UTF8String OPTIONAL, keyid OCTET STRING OPTIONAL }`,
    /// the fields BoringSSL reads (it refuses others, and so does this); `None` if it is not
    /// that.
    fn read(der: &[u8]) -> Option<Self> {
        let (_, settings) = Any::from_der(der).ok()?;
        if (settings.class(), settings.tag()) != (Class::Universal, Tag::Sequence) {
            return None;
        }
        let mut read = Self::default();
        let mut fields = settings.data;
        // Each field's place in the sequence: they come in order, each at most once.
        let mut next = 0;
        while !fields.is_empty() {
            let (rest, field) = Any::from_der(fields).ok()?;
            fields = rest;
            let place = match (field.class(), field.tag()) {
                (Class::Universal, Tag::Sequence) => 0,
                (Class::ContextSpecific, Tag(0)) => 1,
                (Class::Universal, Tag::Utf8String) => 2,
                (Class::Universal, Tag::OctetString) => 3,
                _ => return None,
            };
            if place < next {
                return None;
            }
            next = place + 1;
            // The usages trusted are read to refuse settings BoringSSL cannot read.
            match place {
                0 => {
                    usages(field.data)?;
                }
                1 => read.rejected = usages(field.data)?,
                _ => {}
            }
        }
        Some(read)
    }

    /// True if the settings reject the certificate for extended key usage `usage`: BoringSSL's
    /// `X509_check_trust` finds it rejected then, which fails every chain to it. One trusted for
    /// other uses only, like one without settings that is not self-signed (an intermediate),
    /// it finds untrusted, which fails nothing in Envoy: Envoy sets `X509_V_FLAG_PARTIAL_CHAIN`
    /// on its trust store (default_validator.cc), with which any certificate of the store that
    /// is not rejected anchors a chain (x509_vfy.c, `check_trust`), as every anchor does in
    /// rustls.
    fn rejects(&self, usage: &[u8]) -> bool {
        self.rejected.iter().any(|held| held == usage)
    }
}

/// The object identifiers of a `SEQUENCE OF OID`'s contents, each as its contents; `None` if
/// another element is among them.
fn usages(mut der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut usages = Vec::new();
    while !der.is_empty() {
        let (rest, oid) = Oid::from_der(der).ok()?;
        usages.push(oid.as_bytes().to_vec());
        der = rest;
    }
    Some(usages)
}
