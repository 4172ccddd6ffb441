//! Secured endpoints for the tests, made here because tansu 0.6 serves neither TLS (its `--cert`
//! and `--key` flags exclude each other) nor SASL (its rsasl build registers no mechanism):
//!
//! - [`Certs`]: a CA made for the test (rcgen), a server certificate it signed for `localhost`
//!   and 127.0.0.1, and a second CA that signed nothing the servers show.
//! - [`SecureFront`]: in front of a broker, TLS (rustls) and/or SASL: it answers SaslHandshake
//!   and SaslAuthenticate itself with rsasl's server side (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512,
//!   real proofs checked against salted keys), passes ApiVersions through (adding the two SASL
//!   APIs), closes a connection that asks for anything else before authenticating (as Kafka
//!   does), and after that passes every byte through.
//! - [`SecureTansu`]: a tansu of the test's own that advertises the front, so every connection
//!   a client makes — bootstrap, partition leaders, group coordinators — goes through it.
//! - [`TlsPostgres`]: a throwaway PostgreSQL cluster with `ssl=on`, the test certificate, and
//!   only TLS connections allowed.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::free_port;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, SessionError};
use rsasl::property::{AuthId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// The test CA, a server certificate it signed, and an unrelated CA: PEM files in a directory
/// removed with it.
pub struct Certs {
    pub dir: tempfile::TempDir,
    /// The CA that signed the servers' certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

/// A self-signed CA certificate named `name`, naming `hosts` too (none for a plain CA).
fn self_signed_ca(
    name: &str,
    hosts: &[&str],
) -> (rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let mut params = CertificateParams::new(hosts).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let key_pem = key.serialize_pem();
    (CertifiedIssuer::self_signed(params, key).unwrap(), key_pem)
}

impl Certs {
    pub fn new() -> Self {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let (issuer, _) = self_signed_ca("streamlab test CA", &[]);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self::written(issuer.pem(), cert.pem(), key.serialize_pem())
    }

    /// One certificate as `openssl req -x509` makes it: self-signed and marked CA:TRUE, naming
    /// `hosts`; the servers show it, and it is its own CA (`ca` is a copy of `cert`).
    pub fn self_signed_ca(hosts: &[&str]) -> Self {
        let (cert, key_pem) = self_signed_ca("localhost", hosts);
        Self::written(cert.pem(), cert.pem(), key_pem)
    }

    /// The PEM files in a directory of their own, with an unrelated CA beside them.
    fn written(ca_pem: String, cert_pem: String, key_pem: String) -> Self {
        let (other, _) = self_signed_ca("some other CA", &[]);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca_pem),
            other_ca: write("other-ca.pem", &other.pem()),
            cert: write("server.pem", &cert_pem),
            key: write("server.key", &key_pem),
            cert_pem,
            key_pem,
            dir,
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Arc::new(config)
    }
}

/// The one user the SASL front knows.
pub const USER: &str = "streamlab-test";
pub const PASSWORD: &str = "s3cret-Pa55-never-shown";

/// Salted SCRAM keys of [`USER`], made once per hash (the PBKDF2 is the slow part).
struct ScramKeys {
    salt: Vec<u8>,
    sha256: (Vec<u8>, Vec<u8>),
    sha512: (Vec<u8>, Vec<u8>),
}

const ITERATIONS: u32 = 4096;

impl ScramKeys {
    fn new(password: &str) -> Self {
        let salt = b"streamlab test salt".to_vec();
        let mut salted = Default::default();
        hash_password::<Sha256>(password.as_bytes(), ITERATIONS, &salt, &mut salted);
        let (client, server) = derive_keys::<Sha256>(salted.as_slice());
        let sha256 = (Sha256::digest(client).to_vec(), server.to_vec());
        let mut salted = Default::default();
        hash_password::<Sha512>(password.as_bytes(), ITERATIONS, &salt, &mut salted);
        let (client, server) = derive_keys::<Sha512>(salted.as_slice());
        let sha512 = (Sha512::digest(client).to_vec(), server.to_vec());
        Self {
            salt,
            sha256,
            sha512,
        }
    }
}

/// The server side's view of the user store: SCRAM gets the stored keys, PLAIN is checked here.
struct Users(Arc<ScramKeys>);

struct Authenticated;
impl Validation for Authenticated {
    type Value = bool;
}

impl SessionCallback for Users {
    fn callback(
        &self,
        session: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if context.get_ref::<AuthId>() != Some(USER) {
            return Ok(()); // unknown user: no keys, the exchange fails
        }
        let (stored, server) = match session.mechanism().mechanism.as_str() {
            "SCRAM-SHA-256" => &self.0.sha256,
            "SCRAM-SHA-512" => &self.0.sha512,
            _ => return Ok(()),
        };
        request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
            ITERATIONS,
            &self.0.salt,
            stored,
            server,
        ))?;
        Ok(())
    }

    fn validate(
        &self,
        session: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let ok = match session.mechanism().mechanism.as_str() {
            "PLAIN" => {
                context.get_ref::<AuthId>() == Some(USER)
                    && context.get_ref::<Password>() == Some(PASSWORD.as_bytes())
            }
            // The proof was checked against the stored keys before validation is asked.
            _ => context.get_ref::<AuthId>() == Some(USER),
        };
        validate.with::<Authenticated, _>(|| Ok(ok))?;
        Ok(())
    }
}

const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
static SERVER_MECHANISMS: &[rsasl::prelude::Mechanism] = &[
    rsasl::mechanisms::plain::PLAIN,
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA512,
];

/// What the front puts in front of the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Tls,
    Sasl,
    SaslTls,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A listener on a free loopback port, terminating TLS and/or SASL in front of `upstream`.
pub struct SecureFront {
    /// Dropped with the front: the accept loop and every connection end.
    _runtime: Runtime,
    pub port: u16,
}

impl SecureFront {
    pub fn start(guard: Guard, certs: &Certs, upstream: String) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = matches!(guard, Guard::Tls | Guard::SaslTls)
            .then(|| tokio_rustls::TlsAcceptor::from(certs.server_config()));
        let sasl = matches!(guard, Guard::Sasl | Guard::SaslTls).then(|| {
            SASLConfig::builder()
                .with_registry(rsasl::prelude::Registry::with_mechanisms(SERVER_MECHANISMS))
                .with_callback(Users(Arc::new(ScramKeys::new(PASSWORD))))
                .unwrap()
        });
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (tls, sasl, upstream) = (tls.clone(), sasl.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, tls, sasl, &upstream).await;
                });
            }
        });
        Self {
            _runtime: runtime,
            port,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    client: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sasl: Option<Arc<SASLConfig>>,
    upstream: &str,
) -> Result<(), Failure> {
    client.set_nodelay(true)?;
    let mut client: Box<dyn Io> = match tls {
        Some(acceptor) => Box::new(acceptor.accept(client).await?),
        None => Box::new(client),
    };
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    if let Some(config) = sasl {
        authenticate(&mut client, &mut server, config).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Bytes, Failure> {
    let size = stream.read_i32().await?;
    if !(0..=64 * 1024 * 1024).contains(&size) {
        return Err("not a Kafka frame".into());
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> Result<(), Failure> {
    stream.write_all(&(body.len() as i32).to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(())
}

fn respond<R: Encodable + HeaderVersion>(correlation_id: i32, version: i16, response: &R) -> Bytes {
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, R::header_version(version))
        .unwrap();
    response.encode(&mut out, version).unwrap();
    out.freeze()
}

/// Kafka's SASL_AUTHENTICATION_FAILED and UNSUPPORTED_SASL_MECHANISM.
const AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_MECHANISM: i16 = 33;

/// Serve the client until it has authenticated: ApiVersions goes to the broker (and comes back
/// listing SaslHandshake and SaslAuthenticate), the SASL requests are answered here, anything
/// else ends the connection. A failed authentication is answered, then the connection closed.
async fn authenticate(
    client: &mut Box<dyn Io>,
    server: &mut TcpStream,
    config: Arc<SASLConfig>,
) -> Result<(), Failure> {
    let mut mechanism: Option<String> = None;
    let mut session = None;
    loop {
        let mut body = read_frame(client).await?;
        let key = i16::from_be_bytes([body[0], body[1]]);
        let version = i16::from_be_bytes([body[2], body[3]]);
        match ApiKey::try_from(key) {
            Ok(ApiKey::ApiVersions) => {
                let correlation = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                write_frame(server, &body).await?;
                let answer = read_frame(server).await?;
                let answer = with_sasl_apis(answer, version, correlation);
                write_frame(client, &answer).await?;
            }
            Ok(ApiKey::SaslHandshake) => {
                let header = RequestHeader::decode(
                    &mut body,
                    SaslHandshakeRequest::header_version(version),
                )?;
                let request = SaslHandshakeRequest::decode(&mut body, version)?;
                let asked = request.mechanism.to_string();
                let known = MECHANISMS.contains(&asked.as_str());
                let response = SaslHandshakeResponse::default()
                    .with_error_code(if known { 0 } else { UNSUPPORTED_MECHANISM })
                    .with_mechanisms(
                        MECHANISMS
                            .iter()
                            .map(|m| StrBytes::from_static_str(m))
                            .collect(),
                    );
                write_frame(client, &respond(header.correlation_id, version, &response)).await?;
                if !known {
                    return Err("unsupported mechanism".into());
                }
                mechanism = Some(asked);
            }
            Ok(ApiKey::SaslAuthenticate) => {
                let header = RequestHeader::decode(
                    &mut body,
                    SaslAuthenticateRequest::header_version(version),
                )?;
                let request = SaslAuthenticateRequest::decode(&mut body, version)?;
                let Some(name) = &mechanism else {
                    return Err("SaslAuthenticate before SaslHandshake".into());
                };
                let session = match &mut session {
                    Some(s) => s,
                    None => session.insert(
                        SASLServer::<Authenticated>::new(config.clone())
                            .start_suggested(Mechname::parse(name.as_bytes())?)?,
                    ),
                };
                let mut out = Cursor::new(Vec::new());
                let step = session.step(Some(&request.auth_bytes), &mut out);
                let finished_ok = match &step {
                    Ok(state) if state.is_finished() => session.validation() == Some(true),
                    Ok(_) => false,
                    Err(_) => false,
                };
                let failed = step.is_err()
                    || matches!(&step, Ok(state) if state.is_finished() && !finished_ok);
                let response = if failed {
                    SaslAuthenticateResponse::default()
                        .with_error_code(AUTHENTICATION_FAILED)
                        .with_error_message(Some(StrBytes::from_static_str(
                            "Authentication failed: Invalid username or password",
                        )))
                } else {
                    SaslAuthenticateResponse::default()
                        .with_auth_bytes(Bytes::from(out.into_inner()))
                };
                write_frame(client, &respond(header.correlation_id, version, &response)).await?;
                if failed {
                    return Err("authentication failed".into());
                }
                if finished_ok {
                    return Ok(());
                }
            }
            _ => return Err("a request before authentication".into()),
        }
    }
}

/// The broker's ApiVersions answer with SaslHandshake (0..=1) and SaslAuthenticate (0..=2)
/// listed, whatever the broker itself offers.
fn with_sasl_apis(answer: Bytes, version: i16, correlation: i32) -> Bytes {
    let mut body = answer.clone();
    // ApiVersions responses always use header v0 (so clients can read them at any version).
    let Ok(_) = ResponseHeader::decode(&mut body, 0) else {
        return answer;
    };
    let Ok(mut response) = ApiVersionsResponse::decode(&mut body, version) else {
        return answer; // an error answer at v0 (version not supported): pass it on
    };
    for (key, max) in [(ApiKey::SaslHandshake, 1), (ApiKey::SaslAuthenticate, 2)] {
        response.api_keys.retain(|k| k.api_key != key as i16);
        response.api_keys.push(
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(0)
                .with_max_version(max),
        );
    }
    let mut out = BytesMut::new();
    out.put_i32(correlation);
    response.encode(&mut out, version).unwrap();
    out.freeze()
}

/// A tansu of the test's own, in memory, advertising `front` so that every client connection
/// comes through the front.
pub struct SecureTansu {
    child: Child,
    pub port: u16,
    pub front: SecureFront,
}

impl SecureTansu {
    pub fn start(guard: Guard, certs: &Certs) -> Self {
        let port = free_port();
        let front = SecureFront::start(guard, certs, format!("127.0.0.1:{port}"));
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", front.port),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu must be installed (just install-broker)");
        wait_for_port(port, "tansu");
        Self { child, port, front }
    }

    /// The front's address: what clients are given.
    pub fn address(&self) -> String {
        self.front.address()
    }

    /// The broker's own plaintext port (no TLS, no SASL).
    pub fn plain_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SecureTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A throwaway PostgreSQL cluster that accepts only TLS connections (trust auth, user
/// postgres), serving the test certificate: initdb and pg_ctl from PATH or where Debian puts
/// them; as root it runs as the `postgres` user (else `nobody`), as scripts/test does.
pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<String>,
    pub port: u16,
}

/// A cluster as scripts/test makes one: user postgres, trust, no fsync, UTF-8.
const INITDB_ARGS: &[&str] = &[
    "-U",
    "postgres",
    "--auth=trust",
    "--no-sync",
    "--no-locale",
    "-E",
    "UTF8",
];

impl TlsPostgres {
    pub fn start(certs: &Certs) -> Self {
        let bin = pg_bin();
        let root = is_root();
        let user = root.then(|| {
            if Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                "postgres".to_string()
            } else {
                "nobody".to_string()
            }
        });
        let dir = PathBuf::from(
            String::from_utf8(
                Command::new("mktemp")
                    .args(["-d", "/tmp/streamlab-test-pg-tls.XXXXXX"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap()
            .trim(),
        );
        let tls = Self {
            dir,
            bin,
            user,
            port: free_port(),
        };
        // The key must belong to the server's user and be readable by it alone.
        for (from, name) in [(&certs.cert, "server.crt"), (&certs.key, "server.key")] {
            std::fs::copy(from, tls.dir.join(name)).unwrap();
        }
        chmod(&tls.dir.join("server.key"), "600");
        if let Some(user) = &tls.user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&tls.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = tls.dir.join("data");
        let d = data.to_str().unwrap();
        tls.run("initdb", &[&["-D", d][..], INITDB_ARGS].concat());
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\nfsync = off\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            tls.port,
            tls.dir.join("server.crt").display(),
            tls.dir.join("server.key").display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let log = tls.dir.join("server.log");
        let l = log.to_str().unwrap();
        tls.run("pg_ctl", &["-D", d, "-l", l, "-w", "-t", "60", "start"]);
        tls
    }

    /// Turn TLS off (and allow plaintext connections): the server a client that requires TLS
    /// must refuse.
    pub fn without_tls(&self) {
        let data = self.dir.join("data");
        append(&data.join("postgresql.conf"), "ssl = off\n");
        std::fs::write(
            data.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-w", "reload"]);
        // A reload is signalled, not waited for: wait until plaintext is let in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let url = self.url("postgres", "sslmode=disable");
        while !Command::new("psql")
            .args([url.as_str(), "-qAtc", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(std::time::Instant::now() < deadline, "TLS did not turn off");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = command.args(args).current_dir("/").output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB?QUERY`
    pub fn url(&self, db: &str, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let program = self.bin.join("pg_ctl");
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let _ = command
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .current_dir("/")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bin() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(initdb) = on_path {
        return Path::new(&initdb).parent().unwrap().to_path_buf();
    }
    let mut found = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect::<Vec<_>>();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL's server programs (initdb, pg_ctl) are needed for the TLS tests")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn chmod(path: &Path, mode: &str) {
    assert!(Command::new("chmod")
        .arg(mode)
        .arg(path)
        .status()
        .unwrap()
        .success());
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
