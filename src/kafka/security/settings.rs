//! What Kafka's security settings mean: `security.protocol`, the SASL mechanism and
//! credentials, the TLS files and host-name check; and the refusal of a setting the chosen
//! protocol would ignore. Decided from [`Properties`] without I/O, except the certificate files,
//! which [`super::tls`] reads when the TLS client configuration is built.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use super::properties::{Properties, Secret};
use super::BadSetting;

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

    /// The protocol `value` names (any case): the names are [`Protocol::name`]'s, written once.
    fn parse(value: &str) -> Option<Self> {
        [
            Protocol::Plaintext,
            Protocol::Ssl,
            Protocol::SaslPlaintext,
            Protocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(value))
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

    /// The mechanism `value` names (any case): the names are [`Mechanism::name`]'s, written once.
    fn parse(value: &str) -> Option<Self> {
        [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(value))
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

impl Security {
    /// The settings `props` give (with the SASL username and password taken from
    /// [`USERNAME_ENV`] and [`PASSWORD_ENV`] when they give none); the certificate files are
    /// read now, so a mistake is found before anything connects. An error is one line that
    /// names the key or file, never a secret.
    pub fn from_properties(
        props: &Properties,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BadSetting> {
        props.check_keys()?;
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

/// `security.protocol`, PLAINTEXT when not given.
fn protocol(props: &Properties) -> Result<Protocol, BadSetting> {
    match props.get("security.protocol") {
        None => Ok(Protocol::Plaintext),
        Some(v) => Protocol::parse(v).ok_or_else(|| {
            BadSetting(format!(
                "security.protocol: '{v}' is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            ))
        }),
    }
}

/// No SASL setting without SASL, no TLS setting without TLS: the protocol would ignore them.
fn check_unused(props: &Properties, protocol: Protocol) -> Result<(), BadSetting> {
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
            return Err(BadSetting(format!(
                "{key} is set but security.protocol is {}: SASL is used only with SASL_SSL or SASL_PLAINTEXT",
                protocol.name()
            )));
        }
    }
    if !protocol.uses_tls() {
        if let Some(key) = ssl_keys.iter().find(|k| props.has(k)) {
            return Err(BadSetting(format!(
                "{key} is set but security.protocol is {}: TLS is used only with SSL or SASL_SSL",
                protocol.name()
            )));
        }
    }
    Ok(())
}

fn sasl_settings(
    props: &Properties,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Sasl, BadSetting> {
    let mechanism = match props.get("sasl.mechanism").or(props.get("sasl.mechanisms")) {
        None => Mechanism::Plain,
        Some(v) => Mechanism::parse(v).ok_or_else(|| {
            BadSetting(format!(
                "sasl.mechanism: '{v}' is not supported (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            ))
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
            BadSetting(format!(
                "security.protocol=SASL_*: no sasl.username (set it, or {USERNAME_ENV})"
            ))
        })?;
    let password = props
        .get("sasl.password")
        .map(str::to_string)
        .or(jaas_password)
        .or_else(|| env(PASSWORD_ENV))
        .ok_or_else(|| {
            BadSetting(format!(
                "security.protocol=SASL_*: no sasl.password (set it, or {PASSWORD_ENV})"
            ))
        })?;
    Ok(Sasl {
        mechanism,
        username,
        password: Secret::new(password),
    })
}

/// `username="…"` and `password="…"` of a Java `sasl.jaas.config` (PlainLoginModule or
/// ScramLoginModule).
fn jaas_credentials(jaas: &str) -> Result<(Option<String>, Option<String>), BadSetting> {
    if !(jaas.contains("PlainLoginModule") || jaas.contains("ScramLoginModule")) {
        return Err(BadSetting(
            "sasl.jaas.config: only PlainLoginModule and ScramLoginModule are read".into(),
        ));
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

fn tls_settings(props: &Properties) -> Result<Tls, BadSetting> {
    let ca = props.get("ssl.ca.location").map(PathBuf::from);
    let certificate = props.get("ssl.certificate.location").map(PathBuf::from);
    let key = props.get("ssl.key.location").map(PathBuf::from);
    if props.has("ssl.key.password") {
        return Err(BadSetting(
            "ssl.key.password: encrypted private keys are not read; give ssl.key.location an unencrypted PEM key"
                .into(),
        ));
    }
    let verify_hostname = verify_hostname(props)?;
    let config = super::tls::client_config(
        ca.as_deref(),
        certificate.as_deref(),
        key.as_deref(),
        verify_hostname,
    )?;
    Ok(Tls {
        ca,
        certificate,
        verify_hostname,
        config: Arc::new(config),
    })
}

/// `ssl.endpoint.identification.algorithm`: whether the broker's certificate must name its host.
fn verify_hostname(props: &Properties) -> Result<bool, BadSetting> {
    match props
        .get("ssl.endpoint.identification.algorithm")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("https") => Ok(true),
        Some("") | Some("none") => Ok(false),
        Some(other) => Err(BadSetting(format!(
            "ssl.endpoint.identification.algorithm: '{other}' is not https or none"
        ))),
    }
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
        let err = Security::from_properties(&props(&[("sasl.pasword", "x")]), no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown Kafka setting 'sasl.pasword' (-X)"),
            "{err}"
        );
        let err = Security::from_properties(&props(&[("ssl.truststore.location", "x")]), no_env)
            .unwrap_err()
            .to_string();
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
                .unwrap_err()
                .to_string();
        assert!(err.contains("no sasl.username"), "{err}");
    }

    #[test]
    fn settings_that_the_protocol_would_ignore_are_refused() {
        let err = Security::from_properties(&props(&[("sasl.username", "a")]), no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.protocol is PLAINTEXT"), "{err}");
        let err = Security::from_properties(
            &props(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("ssl.ca.location", "/x"),
            ]),
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ssl.ca.location is set"), "{err}");
        let err = Security::from_properties(&props(&[("security.protocol", "TLS")]), no_env)
            .unwrap_err()
            .to_string();
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
        let err = p.parse_text("justakey\n", "f").unwrap_err().to_string();
        assert_eq!(err, "f:1: expected key=value");
    }
}
