//! The rustls side of Kafka's TLS settings: the trusted roots, the client identity, the
//! verifier of a broker's certificate, and the one line a refused handshake becomes.
//!
//! The verifier lives here, not in `crate::tls`, because what it accepts is Kafka's:
//! librdkafka's `ssl.endpoint.identification.algorithm=none` and its trust of the very
//! certificate `ssl.ca.location` names (OpenSSL's). PostgreSQL connections go through sqlx's
//! own rustls configuration, with `sslmode`'s rules. What both share is only the wording of a
//! refused certificate, which is `crate::tls`'s ([`KAFKA_TLS`] is how Kafka's settings fill it).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::BadSetting;
use crate::tls::{self, TlsSettings};

/// The settings that mend a refused broker certificate.
const KAFKA_TLS: TlsSettings = TlsSettings {
    ca: "ssl.ca.location",
    any_host: "set ssl.endpoint.identification.algorithm=none",
    ca_as_server: "it is trusted only as the very file ssl.ca.location names: set \
                   ssl.ca.location to it, or give the server a certificate its CA signed \
                   (CA:FALSE)",
};

/// The client configuration for a broker's TLS: its certificate must lead to `ca`'s
/// certificates (None: the system's CAs) and, when `verify_hostname`, name the host; the client
/// certificate and key are offered for mutual TLS when given. The files are read now.
pub(super) fn client_config(
    ca: Option<&Path>,
    certificate: Option<&Path>,
    key: Option<&Path>,
    verify_hostname: bool,
) -> Result<ClientConfig, BadSetting> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cas = match ca {
        Some(path) => read_certificates(path, "ssl.ca.location")?,
        None => Vec::new(),
    };
    let verifier = Verifier {
        webpki: verifier(ca, &cas, provider.clone())?,
        verify_hostname,
        cas,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BadSetting(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    client_identity(builder, certificate, key)
}

/// The CAs a broker's certificate must lead to: `ssl.ca.location`'s (`cas`, read from `ca`),
/// or the system's.
fn roots(ca: Option<&Path>, cas: &[CertificateDer<'static>]) -> Result<RootCertStore, BadSetting> {
    let Some(path) = ca else {
        return Ok(system_roots());
    };
    let mut roots = RootCertStore::empty();
    for cert in cas {
        roots.add(cert.clone()).map_err(|e| {
            BadSetting(format!(
                "ssl.ca.location {}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The verifier of a broker's certificate chain against [`roots`].
fn verifier(
    ca: Option<&Path>,
    cas: &[CertificateDer<'static>],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, BadSetting> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca, cas)?), provider)
        .build()
        .map_err(|e| BadSetting(match ca {
            Some(path) => format!("ssl.ca.location {}: {e}", path.display()),
            None => format!(
                "no trusted CA certificates found on this system ({e}): set ssl.ca.location to a PEM file"
            ),
        }))
}

/// The client configuration, with the client certificate and key for mutual TLS when given
/// (both or neither).
fn client_identity(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    certificate: Option<&Path>,
    key: Option<&Path>,
) -> Result<ClientConfig, BadSetting> {
    match (certificate, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certificates(cert_path, "ssl.certificate.location")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                BadSetting(format!(
                    "ssl.key.location {}: no PEM private key read ({e})",
                    key_path.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                BadSetting(format!(
                    "ssl.certificate.location {} and ssl.key.location {} do not make a client identity: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })
        }
        (Some(_), None) => Err(BadSetting(
            "ssl.certificate.location needs ssl.key.location".into(),
        )),
        (None, Some(_)) => Err(BadSetting(
            "ssl.key.location needs ssl.certificate.location".into(),
        )),
    }
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, BadSetting> {
    let data =
        std::fs::read(path).map_err(|e| BadSetting(format!("{key} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            BadSetting(format!(
                "{key} {}: not PEM certificates ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(BadSetting(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        )));
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
