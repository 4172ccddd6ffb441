//! What a TLS client says when it refuses a server's certificate: in words and with the
//! setting that mends it, for Kafka (`kafka::security`) and PostgreSQL (`db`) alike. rustls's
//! own text for most causes is their `Debug` (`Other(OtherError(CaUsedAsEndEntity))`).

use rustls::CertificateError;

/// The settings that mend a refused certificate, as each client spells them.
pub struct TlsSettings {
    /// The trusted CA file (`ssl.ca.location`, `sslrootcert`).
    pub ca: &'static str,
    /// How to stop comparing the host name.
    pub any_host: &'static str,
    /// What to do about a CA certificate (CA:TRUE) in a server's place.
    pub ca_as_server: &'static str,
}

/// webpki's refusal of a CA certificate in a server's place (what `openssl req -x509` makes
/// by default), as rustls passes it on.
pub fn is_ca_used_as_end_entity(cause: &CertificateError) -> bool {
    let CertificateError::Other(other) = cause else {
        return false;
    };
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}

/// Why a server's certificate was refused, and what to do: `(what, remedy)`, to read "the
/// certificate of HOST:PORT {what}: {remedy}".
pub fn certificate_refusal(cause: &CertificateError, settings: &TlsSettings) -> (String, String) {
    let ca = settings.ca;
    let trust = || format!("set {ca} to the CA that signed it");
    match cause {
        CertificateError::UnknownIssuer => {
            ("is not trusted (no trusted CA signed it)".into(), trust())
        }
        CertificateError::BadSignature => (
            "is not trusted (its signature does not verify)".into(),
            trust(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
            "does not name that host".into(),
            format!("connect by a name it lists, or {}", settings.any_host),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            "has expired".into(),
            "renew the server's certificate".into(),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            "is not valid yet".into(),
            "check this machine's clock, or the certificate's start date".into(),
        ),
        _ if is_ca_used_as_end_entity(cause) => (
            "is a CA certificate (CA:TRUE) in the server's place".into(),
            settings.ca_as_server.into(),
        ),
        CertificateError::Other(other) => (
            format!("is refused ({})", words(&other.to_string())),
            format!("check the server's certificate and {ca}"),
        ),
        other => (
            format!("is refused ({})", words(&format!("{other:?}"))),
            format!("check the server's certificate and {ca}"),
        ),
    }
}

/// A `Debug` name made readable: `CaUsedAsEndEntity { .. }` → "ca used as end entity".
pub fn words(debug: &str) -> String {
    let mut text = String::new();
    for (i, c) in debug
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .enumerate()
    {
        if c.is_ascii_uppercase() && i > 0 {
            text.push(' ');
        }
        text.push(c.to_ascii_lowercase());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_read_as_words() {
        assert_eq!(words("CaUsedAsEndEntity"), "ca used as end entity");
        assert_eq!(words("BadEncoding"), "bad encoding");
        assert_eq!(words("HandshakeFailure { x: 1 }"), "handshake failure");
    }
}
