//! How streamlab secures its Kafka connections: `security.protocol`, SASL and TLS, set the way
//! Kafka users already do it — a Java/librdkafka-style properties file (`--command-config`) and
//! `-X key=value` (as kcat) — and used by both connection paths: rskafka's data path
//! ([`super::connect`]) and the kafka-protocol connection ([`super::wire`]).
//!
//! The password is kept in a [`Secret`], which no `Debug` or `Display` shows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::tls::{self, TlsSettings};

/// The settings that mend a refused broker certificate.
const KAFKA_TLS: TlsSettings = TlsSettings {
    ca: "ssl.ca.location",
    any_host: "set ssl.endpoint.identification.algorithm=none",
    ca_as_server: "it is trusted only as the very file ssl.ca.location names: set \
                   ssl.ca.location to it, or give the server a certificate its CA signed \
                   (CA:FALSE)",
};

/// Where the SASL username and password are read from when neither the properties file nor
/// `-X` gives them (so a secret need not sit in a file or on the command line).
pub const USERNAME_ENV: &str = "STREAMLAB_SASL_USERNAME";
pub const PASSWORD_ENV: &str = "STREAMLAB_SASL_PASSWORD";

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Protocol::Plaintext,
            "SSL" => Protocol::Ssl,
            "SASL_PLAINTEXT" => Protocol::SaslPlaintext,
            "SASL_SSL" => Protocol::SaslSsl,
            _ => return None,
        })
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// Kafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value.to_ascii_uppercase().as_str() {
            "PLAIN" => Mechanism::Plain,
            "SCRAM-SHA-256" => Mechanism::ScramSha256,
            "SCRAM-SHA-512" => Mechanism::ScramSha512,
            _ => return None,
        })
    }
}

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// SASL credentials and the mechanism to prove them with.
#[derive(Debug, Clone)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: Secret,
}

/// TLS settings, with the rustls client configuration built from them once.
#[derive(Clone)]
pub struct Tls {
    /// `ssl.ca.location`: None trusts the system's certificate store.
    pub ca: Option<PathBuf>,
    /// `ssl.certificate.location` (a client certificate, for mutual TLS).
    pub certificate: Option<PathBuf>,
    /// `ssl.endpoint.identification.algorithm`: `https` (the default) checks that the broker's
    /// certificate names the host connected to; empty or `none` checks only that it is trusted.
    pub verify_hostname: bool,
    pub config: Arc<ClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca)
            .field("certificate", &self.certificate)
            .field("verify_hostname", &self.verify_hostname)
            .finish_non_exhaustive()
    }
}

/// The security of every connection to Kafka. `Default` is PLAINTEXT.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub protocol: Protocol,
    /// Some exactly when the protocol is SASL_*.
    pub sasl: Option<Sasl>,
    /// Some exactly when the protocol is SSL or SASL_SSL.
    pub tls: Option<Tls>,
    /// The settings these were made from (for the processes `bench` starts).
    pub source: Properties,
}

/// Every key streamlab reads; anything else is an error that names it.
const KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.jaas.config",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// Settings as `key = value` pairs, in the order given (a later one wins), with where each came
/// from for error messages.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    entries: Vec<(String, Secret, String)>,
}

impl Properties {
    /// Add `key=value` from `origin` (say, `-X` or the file's path and line).
    pub fn set(&mut self, key: &str, value: &str, origin: impl Into<String>) {
        self.entries.push((
            key.trim().to_string(),
            Secret::new(value.trim()),
            origin.into(),
        ));
    }

    /// Read a Java-style properties file (see [`Properties::parse_text`]). Errors name the file,
    /// never a value.
    pub fn read_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --command-config {}: {e}", path.display()))?;
        self.parse_text(&text, &path.display().to_string())
    }

    /// Read properties-file text as `java.util.Properties.load` does: `#` and `!` comment lines;
    /// a line ending in an odd number of `\` goes on on the next (whose leading whitespace is
    /// skipped); the key ends at the first unescaped `=`, `:` or whitespace, and one `=` or `:`
    /// may follow whitespace; the value's leading whitespace is skipped, its trailing kept;
    /// `\t`, `\n`, `\r`, `\f`, `\uXXXX` and `\` before any other character (`\=`, `\:`,
    /// `\ `, `\\`) are unescaped in keys and values. `name` says where the text came from in
    /// error messages, which never show a value.
    pub fn parse_text(&mut self, text: &str, name: &str) -> Result<(), String> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let lines: Vec<&str> = text.split('\n').collect();
        let mut next = 0;
        while next < lines.len() {
            let first_line = next + 1;
            let line = lines[next].trim_start_matches(is_blank);
            next += 1;
            if line.is_empty() || line.starts_with(['#', '!']) {
                continue;
            }
            let mut logical = line.to_string();
            while ends_in_escape(&logical) {
                logical.pop();
                let Some(more) = lines.get(next) else { break };
                logical.push_str(more.trim_start_matches(is_blank));
                next += 1;
            }
            let at = |what: &str| format!("{name}:{first_line}: {what}");
            let (key, value) = split_entry(&logical).ok_or_else(|| at("expected key=value"))?;
            let key = unescape(key).ok_or_else(|| at("malformed \\uXXXX escape in the key"))?;
            let value =
                unescape(value).ok_or_else(|| at("malformed \\uXXXX escape in the value"))?;
            self.entries
                .push((key, Secret::new(value), format!("{name}:{first_line}")));
        }
        Ok(())
    }

    /// As properties-file text, each key once (the value that wins), for a child process.
    pub fn to_text(&self) -> Secret {
        let mut text = String::new();
        for key in KEYS {
            if let Some(value) = self.get(key) {
                text.push_str(&format!("{key}={}\n", escape(value)));
            }
        }
        Secret::new(text)
    }

    /// The value of `key` that wins, without surrounding whitespace (as Kafka's ConfigDef
    /// reads every value it is given).
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.expose().trim())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// Whitespace as a properties file means it: space, tab, form feed.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Whether `line` ends in an odd number of backslashes: a line that goes on on the next.
fn ends_in_escape(line: &str) -> bool {
    (line.len() - line.trim_end_matches('\\').len()) % 2 == 1
}

/// A logical line's key and value, both still escaped: the key ends at the first unescaped `=`,
/// `:` or whitespace; whitespace, then one `=` or `:`, then whitespace separate it from the
/// value. `None` for a line that is only a key.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let mut chars = line.char_indices();
    let mut end = None;
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '=' | ':' => {
                end = Some(at);
                break;
            }
            c if is_blank(c) => {
                end = Some(at);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let rest = line[end..].trim_start_matches(is_blank);
    let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
    Some((&line[..end], rest.trim_start_matches(is_blank)))
}

/// `text` with its escapes replaced by what they stand for; `None` for a malformed `\uXXXX`.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = (hex.len() == 4)
                    .then(|| u16::from_str_radix(&hex, 16).ok())
                    .flatten()?;
                out.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Some(out)
}

/// `value` written so that [`Properties::parse_text`] reads it back as it is.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (at, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            ' ' if at == 0 => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

impl Security {
    /// The settings `props` give (with the SASL username and password taken from
    /// [`USERNAME_ENV`] and [`PASSWORD_ENV`] when they give none); the certificate files are
    /// read now, so a mistake is found before anything connects. An error is one line that
    /// names the key or file, never a secret.
    pub fn from_properties(
        props: &Properties,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        check_keys(props)?;
        let protocol = protocol(props)?;
        check_unused(props, protocol)?;
        let sasl = if protocol.uses_sasl() {
            Some(sasl_settings(props, &env)?)
        } else {
            None
        };
        let tls = if protocol.uses_tls() {
            Some(tls_settings(props)?)
        } else {
            None
        };
        Ok(Self {
            protocol,
            sasl,
            tls,
            source: props.clone(),
        })
    }

    /// The SASL configuration rskafka takes.
    pub fn rskafka_sasl(&self) -> Option<rskafka::client::SaslConfig> {
        use rskafka::client::{Credentials, SaslConfig};
        let sasl = self.sasl.as_ref()?;
        let credentials = Credentials::new(sasl.username.clone(), sasl.password.expose().into());
        Some(match sasl.mechanism {
            Mechanism::Plain => SaslConfig::Plain(credentials),
            Mechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            Mechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        })
    }
}

/// Every key is one streamlab reads; else an error naming the first that is not.
fn check_keys(props: &Properties) -> Result<(), String> {
    for (key, _, origin) in &props.entries {
        if !KEYS.contains(&key.as_str()) {
            let hint = if key.contains("truststore") || key.contains("keystore") {
                " (Java key stores are not read: give PEM files with ssl.ca.location, ssl.certificate.location and ssl.key.location)"
            } else {
                ""
            };
            return Err(format!(
                "unknown Kafka setting '{key}' ({origin}); streamlab reads {}{hint}",
                KEYS.join(", ")
            ));
        }
    }
    Ok(())
}

/// `security.protocol`, PLAINTEXT when not given.
fn protocol(props: &Properties) -> Result<Protocol, String> {
    match props.get("security.protocol") {
        None => Ok(Protocol::Plaintext),
        Some(v) => Protocol::parse(v).ok_or_else(|| {
            format!("security.protocol: '{v}' is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        }),
    }
}

/// No SASL setting without SASL, no TLS setting without TLS: the protocol would ignore them.
fn check_unused(props: &Properties, protocol: Protocol) -> Result<(), String> {
    let sasl_keys = [
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "sasl.jaas.config",
    ];
    let ssl_keys = [
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.endpoint.identification.algorithm",
    ];
    if !protocol.uses_sasl() {
        if let Some(key) = sasl_keys.iter().find(|k| props.has(k)) {
            return Err(format!(
                "{key} is set but security.protocol is {}: SASL is used only with SASL_SSL or SASL_PLAINTEXT",
                protocol.name()
            ));
        }
    }
    if !protocol.uses_tls() {
        if let Some(key) = ssl_keys.iter().find(|k| props.has(k)) {
            return Err(format!(
                "{key} is set but security.protocol is {}: TLS is used only with SSL or SASL_SSL",
                protocol.name()
            ));
        }
    }
    Ok(())
}

fn sasl_settings(
    props: &Properties,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Sasl, String> {
    let mechanism = match props.get("sasl.mechanism").or(props.get("sasl.mechanisms")) {
        None => Mechanism::Plain,
        Some(v) => Mechanism::parse(v).ok_or_else(|| {
            format!(
                "sasl.mechanism: '{v}' is not supported (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        })?,
    };
    let (jaas_user, jaas_password) = match props.get("sasl.jaas.config") {
        Some(jaas) => jaas_credentials(jaas)?,
        None => (None, None),
    };
    let username = props
        .get("sasl.username")
        .map(str::to_string)
        .or(jaas_user)
        .or_else(|| env(USERNAME_ENV))
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            format!("security.protocol=SASL_*: no sasl.username (set it, or {USERNAME_ENV})")
        })?;
    let password = props
        .get("sasl.password")
        .map(str::to_string)
        .or(jaas_password)
        .or_else(|| env(PASSWORD_ENV))
        .ok_or_else(|| {
            format!("security.protocol=SASL_*: no sasl.password (set it, or {PASSWORD_ENV})")
        })?;
    Ok(Sasl {
        mechanism,
        username,
        password: Secret::new(password),
    })
}

/// `username="…"` and `password="…"` of a Java `sasl.jaas.config` (PlainLoginModule or
/// ScramLoginModule).
fn jaas_credentials(jaas: &str) -> Result<(Option<String>, Option<String>), String> {
    if !(jaas.contains("PlainLoginModule") || jaas.contains("ScramLoginModule")) {
        return Err(
            "sasl.jaas.config: only PlainLoginModule and ScramLoginModule are read".to_string(),
        );
    }
    let field = |name: &str| -> Option<String> {
        let mut rest = jaas;
        while let Some(at) = rest.find(name) {
            let before = rest[..at].chars().last();
            let after = rest[at + name.len()..].trim_start();
            rest = &rest[at + name.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '.') {
                continue;
            }
            let Some(value) = after.strip_prefix('=') else {
                continue;
            };
            let value = value.trim_start().strip_prefix('"')?;
            let mut out = String::new();
            let mut chars = value.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => return Some(out),
                    c => out.push(c),
                }
            }
            return None;
        }
        None
    };
    Ok((field("username"), field("password")))
}

fn tls_settings(props: &Properties) -> Result<Tls, String> {
    let ca = props.get("ssl.ca.location").map(PathBuf::from);
    let certificate = props.get("ssl.certificate.location").map(PathBuf::from);
    let key = props.get("ssl.key.location").map(PathBuf::from);
    if props.has("ssl.key.password") {
        return Err(
            "ssl.key.password: encrypted private keys are not read; give ssl.key.location an unencrypted PEM key"
                .to_string(),
        );
    }
    let verify_hostname = verify_hostname(props)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cas = match &ca {
        Some(path) => read_certificates(path, "ssl.ca.location")?,
        None => Vec::new(),
    };
    let verifier = Verifier {
        webpki: verifier(ca.as_deref(), &cas, provider.clone())?,
        verify_hostname,
        cas,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = client_identity(builder, certificate.as_deref(), key.as_deref())?;
    Ok(Tls {
        ca,
        certificate,
        verify_hostname,
        config: Arc::new(config),
    })
}

/// `ssl.endpoint.identification.algorithm`: whether the broker's certificate must name its host.
fn verify_hostname(props: &Properties) -> Result<bool, String> {
    match props
        .get("ssl.endpoint.identification.algorithm")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("https") => Ok(true),
        Some("") | Some("none") => Ok(false),
        Some(other) => Err(format!(
            "ssl.endpoint.identification.algorithm: '{other}' is not https or none"
        )),
    }
}

/// The CAs a broker's certificate must lead to: `ssl.ca.location`'s (`cas`, read from `ca`),
/// or the system's.
fn roots(ca: Option<&Path>, cas: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let Some(path) = ca else {
        return Ok(system_roots());
    };
    let mut roots = RootCertStore::empty();
    for cert in cas {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "ssl.ca.location {}: not a usable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The verifier of a broker's certificate chain against [`roots`].
fn verifier(
    ca: Option<&Path>,
    cas: &[CertificateDer<'static>],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca, cas)?), provider)
        .build()
        .map_err(|e| match ca {
            Some(path) => format!("ssl.ca.location {}: {e}", path.display()),
            None => format!(
                "no trusted CA certificates found on this system ({e}): set ssl.ca.location to a PEM file"
            ),
        })
}

/// The client configuration, with the client certificate and key for mutual TLS when given
/// (both or neither).
fn client_identity(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    certificate: Option<&Path>,
    key: Option<&Path>,
) -> Result<ClientConfig, String> {
    match (certificate, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certificates(cert_path, "ssl.certificate.location")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                format!(
                    "ssl.key.location {}: no PEM private key read ({e})",
                    key_path.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "ssl.certificate.location {} and ssl.key.location {} do not make a client identity: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })
        }
        (Some(_), None) => Err("ssl.certificate.location needs ssl.key.location".to_string()),
        (None, Some(_)) => Err("ssl.key.location needs ssl.certificate.location".to_string()),
    }
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The system's trusted CAs (as librdkafka and the JVM use theirs when no CA is given).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    roots
}

/// A broker's certificate checked as librdkafka (OpenSSL) checks it: webpki's verdict on the
/// chain and the name, with two differences.
/// - `ssl.endpoint.identification.algorithm=none`: the chain must still lead to a trusted CA;
///   only the host name is not compared.
/// - A self-signed certificate marked CA:TRUE (what `openssl req -x509` makes by default) that
///   is byte for byte one of `ssl.ca.location`'s certificates is trusted as itself, as OpenSSL
///   trusts a certificate it was given directly. webpki refuses any CA certificate as a server's
///   own (`CaUsedAsEndEntity`), after it has checked the validity period; the name is then
///   checked here (unless the setting above says not to), and the handshake's signature by its
///   key as for any certificate.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    verify_hostname: bool,
    /// `ssl.ca.location`'s certificates (none: the system's CAs are trusted).
    cas: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let verdict = match verdict {
            Err(rustls::Error::InvalidCertificate(cause))
                if tls::is_ca_used_as_end_entity(&cause)
                    && self.cas.iter().any(|ca| ca.as_ref() == end_entity.as_ref()) =>
            {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&cert, server_name)
                    .map(|()| ServerCertVerified::assertion())
            }
            other => other,
        };
        match verdict {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.verify_hostname => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A connection refused for its security settings (TLS, SASL, or a TLS/plaintext mismatch):
/// retrying cannot help, so callers that retry stop at once.
#[derive(Debug)]
pub struct SecurityError(pub String);

impl fmt::Display for SecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecurityError {}

/// Whether `err` is (or was caused by) a [`SecurityError`]: retrying cannot help.
pub fn is_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.is::<SecurityError>())
}

/// `message` as a [`SecurityError`].
pub fn refused(message: impl Into<String>) -> anyhow::Error {
    SecurityError(message.into()).into()
}

/// One line for a failed TLS handshake with `addr`: what is wrong and which setting mends it.
pub fn explain_tls_error(addr: &str, err: &std::io::Error) -> String {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(cause)) => {
            let (what, remedy) = tls::certificate_refusal(cause, &KAFKA_TLS);
            format!("TLS: the certificate of {addr} {what}: {remedy}")
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "TLS: {addr} ended the handshake ({}): does it want a client certificate (ssl.certificate.location, ssl.key.location) or trust ours?",
            tls::words(&format!("{alert:?}"))
        ),
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) => {
            not_tls(addr)
        }
        Some(other) => format!("TLS handshake with {addr} failed: {other}"),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof
            || err.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            not_tls(addr)
        }
        None => format!("TLS handshake with {addr} failed: {err}"),
    }
}

/// A TLS client that reached a listener without TLS.
pub fn not_tls(addr: &str) -> String {
    format!(
        "TLS: {addr} does not answer TLS: is it a plaintext listener? (then security.protocol=PLAINTEXT or SASL_PLAINTEXT)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        let mut p = Properties::default();
        for (k, v) in pairs {
            p.set(k, v, "-X");
        }
        p
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn plaintext_by_default_and_unknown_keys_are_named() {
        let s = Security::from_properties(&Properties::default(), no_env).unwrap();
        assert_eq!(s.protocol, Protocol::Plaintext);
        let err = Security::from_properties(&props(&[("sasl.pasword", "x")]), no_env).unwrap_err();
        assert!(
            err.starts_with("unknown Kafka setting 'sasl.pasword' (-X)"),
            "{err}"
        );
        let err = Security::from_properties(&props(&[("ssl.truststore.location", "x")]), no_env)
            .unwrap_err();
        assert!(err.contains("Java key stores"), "{err}");
    }

    #[test]
    fn sasl_settings_come_from_keys_jaas_or_the_environment_and_never_show_the_password() {
        let s = Security::from_properties(
            &props(&[
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "alice"),
                ("sasl.password", "hunter2"),
            ]),
            no_env,
        )
        .unwrap();
        let sasl = s.sasl.as_ref().unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str()),
            (Mechanism::ScramSha512, "alice")
        );
        assert_eq!(sasl.password.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));

        let jaas = r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="bob" password="p\"w";"#;
        let s = Security::from_properties(
            &props(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.jaas.config", jaas),
            ]),
            no_env,
        )
        .unwrap();
        let sasl = s.sasl.unwrap();
        assert_eq!(
            (sasl.username.as_str(), sasl.password.expose()),
            ("bob", "p\"w")
        );

        let env = |k: &str| match k {
            USERNAME_ENV => Some("carol".to_string()),
            PASSWORD_ENV => Some("from-env".to_string()),
            _ => None,
        };
        let s = Security::from_properties(&props(&[("security.protocol", "SASL_PLAINTEXT")]), env)
            .unwrap();
        assert_eq!(s.sasl.unwrap().password.expose(), "from-env");

        let err =
            Security::from_properties(&props(&[("security.protocol", "SASL_PLAINTEXT")]), no_env)
                .unwrap_err();
        assert!(err.contains("no sasl.username"), "{err}");
    }

    #[test]
    fn settings_that_the_protocol_would_ignore_are_refused() {
        let err = Security::from_properties(&props(&[("sasl.username", "a")]), no_env).unwrap_err();
        assert!(err.contains("security.protocol is PLAINTEXT"), "{err}");
        let err = Security::from_properties(
            &props(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("ssl.ca.location", "/x"),
            ]),
            no_env,
        )
        .unwrap_err();
        assert!(err.contains("ssl.ca.location is set"), "{err}");
        let err =
            Security::from_properties(&props(&[("security.protocol", "TLS")]), no_env).unwrap_err();
        assert!(err.contains("'TLS' is not"), "{err}");
    }

    #[test]
    fn a_properties_file_reads_as_java_does() {
        let mut p = Properties::default();
        p.parse_text(
            "# comment\n! also\nsecurity.protocol = SASL_SSL\nsasl.mechanism:PLAIN\n\
             sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \\\n    \
             username=\"u\" \\\n    password=\"p\";\n",
            "f",
        )
        .unwrap();
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("sasl.mechanism"), Some("PLAIN"));
        let (u, pw) = jaas_credentials(p.get("sasl.jaas.config").unwrap()).unwrap();
        assert_eq!((u.as_deref(), pw.as_deref()), (Some("u"), Some("p")));
        let err = p.parse_text("justakey\n", "f").unwrap_err();
        assert_eq!(err, "f:1: expected key=value");
    }

    /// The entries a text reads as, values exact (before `get`'s trimming).
    fn entries(text: &str) -> Vec<(String, String)> {
        let mut p = Properties::default();
        p.parse_text(text, "f").unwrap();
        p.entries
            .iter()
            .map(|(k, v, _)| (k.clone(), v.expose().to_string()))
            .collect()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn separators_whitespace_and_comments_follow_java_util_properties() {
        assert_eq!(
            entries("a=1\nb:2\nc 3\nd\t = 4\ne :  5\n  f=6  \n\tg\x0c=7\nh = = 8\n"),
            [
                pair("a", "1"),
                pair("b", "2"),
                pair("c", "3"),
                pair("d", "4"),
                pair("e", "5"),
                pair("f", "6  "),
                pair("g", "7"),
                pair("h", "= 8"),
            ]
        );
        assert_eq!(
            entries("# a=1\n  ! b=2\n\n   \nc=#3\r\nd=!4\re=5"),
            [pair("c", "#3"), pair("d", "!4"), pair("e", "5")]
        );
        // A comment line does not go on, even when it ends in a backslash.
        assert_eq!(entries("# x \\\na=1\n"), [pair("a", "1")]);
        assert_eq!(entries("k=\n"), [pair("k", "")]);
    }

    #[test]
    fn escapes_follow_java_util_properties() {
        assert_eq!(
            entries(
                "a\\=b\\:c\\ d=x\\=y\\:z\nt=1\\t2\\n3\\r4\\f5\nu=\\u0041\\u00e9\\u20AC\n\
                 s=\\ lead\ncase=\\q\\#\\!\\\\\n"
            ),
            [
                pair("a=b:c d", "x=y:z"),
                pair("t", "1\t2\n3\r4\x0c5"),
                pair("u", "Aé€"),
                pair("s", " lead"),
                pair("case", "q#!\\"),
            ]
        );
        let mut p = Properties::default();
        let err = p.parse_text("a=\\u00G1\n", "f").unwrap_err();
        assert_eq!(err, "f:1: malformed \\uXXXX escape in the value");
        let err = p.parse_text("a=\\u00\n", "f").unwrap_err();
        assert!(err.starts_with("f:1: malformed"), "{err}");
    }

    #[test]
    fn a_trailing_backslash_joins_the_next_line_without_its_leading_whitespace() {
        assert_eq!(
            entries("a=one \\\n     two\\\n\tthree\nb=x\\\\\nc=y\\\n"),
            [pair("a", "one twothree"), pair("b", "x\\"), pair("c", "y")]
        );
        // A continuation line that starts with '#' is part of the value.
        assert_eq!(entries("a=1\\\n  #2\n"), [pair("a", "1#2")]);
    }

    #[test]
    fn to_text_reads_back_as_it_was() {
        let mut p = Properties::default();
        p.entries.push((
            "sasl.password".into(),
            Secret::new("p\\w\td=:#!\n\u{e9} x"),
            "-X".into(),
        ));
        let text = p.to_text();
        let mut back = Properties::default();
        back.parse_text(text.expose(), "env").unwrap();
        assert_eq!(
            back.entries[0].1.expose(),
            "p\\w\td=:#!\n\u{e9} x",
            "{}",
            text.expose()
        );
    }
}
