//! A framed request/response connection for `kafka-protocol` messages.
//!
//! Kafka's framing is a 4-byte big-endian size, then a request header and body. The first request
//! on a connection is ApiVersions; every later request is sent at the highest version both we and
//! the broker support, so the same code talks to tansu and to Apache Kafka 4.x (which dropped
//! many old versions).
//!
//! What a response may make us allocate: the frame is read only up to [`MAX_RESPONSE_BYTES`];
//! inside it, `kafka-protocol` 0.18 reserves `Vec::with_capacity(count)` for every array from
//! the count on the wire, before reading any element, so a broker (or anyone on the plaintext
//! path to it) answering with an impossible count such as 0x7fffffff can make the allocation
//! fail, which aborts the process. Only a schema-aware walk could check those counts first, and
//! no generic one exists without restating every response's schema at every version; the
//! upstream fixes (kafka-protocol-rs/kafka-protocol-rs#152, #161, #200: bound the capacity by
//! the bytes left) are not released yet. The brokers are the ones streamlab was pointed at;
//! bytes that *other clients of a group* control — subscriptions and assignments, carried inside
//! JoinGroup, SyncGroup and DescribeGroups responses as opaque byte fields — are checked before
//! they are decoded (see [`super::bounds`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::security::{self, Security};
use super::{Config, Error};

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Responses larger than this are refused rather than allocated.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

pub struct WireConnection {
    addr: String,
    stream: Box<dyn Io>,
    next_correlation_id: i32,
    /// api key → (min, max) version the broker accepts.
    broker_versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
    /// A request was started and never finished (timed out, failed, or its future was dropped
    /// by a `select!`): its response may still arrive, so nothing more can be read safely.
    broken: bool,
}

impl WireConnection {
    /// Connect as `opts.security` says (TLS, then SASL after the version negotiation) and
    /// negotiate versions. Every step is bounded by `opts.timeout`; a failure is one line that
    /// names its cause.
    pub async fn connect(addr: &str, opts: &Config) -> Result<Self> {
        let timeout = opts.timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::from(ConnectionError::Unreachable(addr.to_string(), timeout)))?
            .with_context(|| format!("cannot reach Kafka at {addr}"))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match &opts.security.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(tls_handshake(tcp, addr, tls, timeout).await?),
        };
        let mut conn = Self::negotiate(addr, stream, timeout, &opts.security).await?;
        if let Some(sasl) = &opts.security.sasl {
            super::sasl::authenticate(&mut conn, sasl).await?;
        }
        Ok(conn)
    }

    async fn negotiate(
        addr: &str,
        stream: Box<dyn Io>,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self> {
        let mut conn = Self {
            addr: addr.to_string(),
            stream,
            next_correlation_id: 1,
            broker_versions: HashMap::new(),
            timeout,
            broken: false,
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamlab"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 is what every current client sends first; a broker that does not know it still
        // answers, at v0, with the list of what it supports (KIP-511).
        let body = conn
            .exchange(&request, 3, timeout)
            .await
            .map_err(|e| first_answer_error(addr, security, e))?;
        let mut response = api_versions_answer(body, addr)?;
        if response.error_code == UNSUPPORTED_VERSION && response.api_keys.is_empty() {
            response = conn.send(&request, 0, timeout).await?;
        }
        if response.error_code != 0 {
            bail!(
                "broker {addr} refused ApiVersions (error {})",
                response.error_code
            );
        }
        conn.broker_versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether an earlier request was abandoned half way; such a connection must be replaced.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Send `request` at the highest version both sides support.
    pub async fn call<R: Request>(&mut self, request: R) -> Result<R::Response> {
        self.call_capped(request, R::VERSIONS.max).await
    }

    /// Like [`call`](Self::call), but never above `cap` (for versions whose shape we do not fill).
    pub async fn call_capped<R: Request>(&mut self, request: R, cap: i16) -> Result<R::Response> {
        let version = self.version_for::<R>(cap)?;
        self.send(&request, version, self.timeout).await
    }

    /// Like [`call_capped`](Self::call_capped), with its own deadline: Apache Kafka holds a
    /// JoinGroup until every member has rejoined, which may take the whole rebalance timeout.
    pub async fn call_within<R: Request>(
        &mut self,
        request: R,
        cap: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let version = self.version_for::<R>(cap)?;
        self.send(&request, version, timeout).await
    }

    /// The version `call_capped` would use, so callers can fill version-specific fields.
    pub fn version_for<R: Request>(&self, cap: i16) -> Result<i16> {
        let name = api_name(R::KEY);
        let (broker_min, broker_max) = *self
            .broker_versions
            .get(&R::KEY)
            .ok_or_else(|| anyhow!("broker {} does not support {name}", self.addr))?;
        let version = broker_max.min(R::VERSIONS.max).min(cap);
        if version < broker_min.max(R::VERSIONS.min) {
            bail!(
                "no common {name} version with broker {} (broker {broker_min}..={broker_max}, streamlab {}..={})",
                self.addr,
                R::VERSIONS.min,
                R::VERSIONS.max.min(cap)
            );
        }
        Ok(version)
    }

    async fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let mut body = self.exchange(request, version, timeout).await?;
        let name = api_name(R::KEY);
        R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding {name} v{version} response from {}", self.addr))
    }

    /// Send `request` at `version` and read its answer: the response body, after its header.
    async fn exchange<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        if self.broken {
            return Err(Error::from(ConnectionError::Broken(self.addr.clone())).into());
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("streamlab")));

        let mut frame = BytesMut::new();
        frame.put_i32(0); // size, patched below
        header.encode(&mut frame, R::header_version(version))?;
        request.encode(&mut frame, version)?;
        let size = i32::try_from(frame.len() - 4).context("request too large")?;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let name = api_name(R::KEY);
        // Cleared only once the whole response is read: any exit before that leaves the stream
        // mid-frame.
        self.broken = true;
        let mut body = tokio::time::timeout(timeout, self.round_trip(&frame))
            .await
            .map_err(|_| {
                Error::from(ConnectionError::TimedOut(
                    name.clone(),
                    self.addr.clone(),
                    timeout,
                ))
            })?
            .with_context(|| format!("{name} to {}", self.addr))?;
        self.broken = false;

        let response_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
        if response_header.correlation_id != correlation_id {
            bail!(
                "{name} to {}: response out of order (correlation id {} ≠ {correlation_id})",
                self.addr,
                response_header.correlation_id
            );
        }
        Ok(body)
    }

    async fn round_trip(&mut self, frame: &[u8]) -> Result<Bytes> {
        self.stream.write_all(frame).await?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await?;
        if looks_like_tls(&size) {
            return Err(Error::from(ConnectionError::AnsweredTls).into());
        }
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size).map_err(|_| anyhow!("negative response size"))?;
        if size > MAX_RESPONSE_BYTES {
            bail!("response of {size} bytes is larger than {MAX_RESPONSE_BYTES}");
        }
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    }
}

/// What the SASL exchange asks of a connection; the same calls as above.
impl super::sasl::Framed for WireConnection {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn offers<R: Request>(&self, cap: i16) -> bool {
        self.version_for::<R>(cap).is_ok()
    }

    fn call_capped<R: Request + Send + Sync>(
        &mut self,
        request: R,
        cap: i16,
    ) -> impl std::future::Future<Output = Result<R::Response>> + Send {
        WireConnection::call_capped(self, request, cap)
    }
}

/// A connection that could not be made, was left half way, or went unanswered: worth another
/// one (see [`super::retry::Retry`]); or one answered in TLS, which is not. I/O errors say the
/// same in their own type. Made only inside a [`Error::Connection`], where callers look for it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot reach Kafka at {0}: no answer within {1:?}")]
    Unreachable(String, Duration),
    #[error("the connection to {0} lost track of an earlier request; reconnect")]
    Broken(String),
    #[error("{0} to {1} timed out after {2:?}")]
    TimedOut(String, String, Duration),
    /// The broker answered a plaintext request with TLS: a TLS listener, which a new plaintext
    /// connection would reach again (no retry helps).
    #[error("the broker answered with TLS")]
    AnsweredTls,
}

/// UNSUPPORTED_VERSION: the broker does not know the ApiVersions version asked for.
const UNSUPPORTED_VERSION: i16 = 35;

/// The answer to an ApiVersions v3. A broker that does not know v3 answers UNSUPPORTED_VERSION
/// in a v0 body (KIP-511), which does not decode as v3 (or decodes as nonsense): such an
/// answer is read again as v0, where the versions it supports are.
fn api_versions_answer(body: Bytes, addr: &str) -> Result<ApiVersionsResponse> {
    match ApiVersionsResponse::decode(&mut body.clone(), 3) {
        Ok(response) if response.error_code != UNSUPPORTED_VERSION => Ok(response),
        _ => ApiVersionsResponse::decode(&mut body.clone(), 0)
            .with_context(|| format!("decoding ApiVersions response from {addr}")),
    }
}

/// The start of a TLS record (a handshake or an alert, TLS 1.0–1.3), where a Kafka response's
/// size would be: a size that large is refused anyway, so nothing real is mistaken for it.
fn looks_like_tls(size: &[u8; 4]) -> bool {
    matches!(size[0], 0x15 | 0x16) && size[1] == 0x03 && size[2] <= 0x04
}

/// The first request on a connection failed: say what that usually means for the security
/// settings (a TLS listener reached without TLS, or one that closes on what it cannot read).
fn first_answer_error(addr: &str, security: &Security, err: anyhow::Error) -> anyhow::Error {
    if matches!(
        Error::of(&err),
        Some(Error::Connection(ConnectionError::AnsweredTls))
    ) {
        return Error::refused(format!(
            "{addr} is a TLS listener and security.protocol is {}: set security.protocol=SSL (or SASL_SSL) and ssl.ca.location",
            security.protocol.name()
        ));
    }
    let closed = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            )
        })
    });
    if closed && security.tls.is_none() {
        return Error::refused(format!(
            "{addr} closed the connection at the first request (security.protocol is {}): a TLS listener? then set security.protocol=SSL or SASL_SSL",
            security.protocol.name()
        ));
    }
    err
}

/// The TLS handshake over `tcp`, verifying the broker as `tls` says, within `timeout`.
async fn tls_handshake(
    tcp: TcpStream,
    addr: &str,
    tls: &security::Tls,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
        Error::refused(format!(
            "TLS: '{host}' (of {addr}) is not a host name or IP address"
        ))
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Error::refused(security::explain_tls_error(addr, &e))),
        Err(_) => Err(Error::refused(format!(
            "TLS: {addr} did not finish the handshake within {timeout:?}: is it a plaintext listener? (then security.protocol=PLAINTEXT or SASL_PLAINTEXT)"
        ))),
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api key {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{HeartbeatRequest, RequestHeader};
    use tokio::net::TcpListener;

    /// A broker that negotiates versions, then never answers: the shape of a JoinGroup the
    /// coordinator holds, or of a request whose wait was cancelled.
    async fn silent_broker() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_api_versions_only(stream));
            }
        });
        addr
    }

    async fn answer_api_versions_only(mut stream: TcpStream) {
        let size = stream.read_i32().await.unwrap();
        let mut request = vec![0u8; size as usize];
        stream.read_exact(&mut request).await.unwrap();
        let mut request = Bytes::from(request);
        let header = RequestHeader::decode(&mut request, 2).unwrap();
        let version = header.request_api_version;
        let response = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::Heartbeat as i16)
            .with_min_version(0)
            .with_max_version(4)]);
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut frame, ApiVersionsResponse::header_version(version))
            .unwrap();
        response.encode(&mut frame, version).unwrap();
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        stream.write_all(&frame).await.unwrap();
        // Read whatever comes next and never answer it.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }

    #[test]
    fn a_v0_answer_to_api_versions_v3_is_read_as_v0() {
        let v0 = ApiVersionsResponse::default()
            .with_error_code(UNSUPPORTED_VERSION)
            .with_api_keys(vec![ApiVersion::default()
                .with_api_key(ApiKey::ApiVersions as i16)
                .with_min_version(0)
                .with_max_version(2)]);
        let mut body = BytesMut::new();
        v0.encode(&mut body, 0).unwrap();
        let body = body.freeze();
        let response = api_versions_answer(body, "broker:9092").unwrap();
        assert_eq!(response.error_code, UNSUPPORTED_VERSION);
        assert_eq!(response.api_keys.len(), 1);
        assert_eq!(response.api_keys[0].max_version, 2);

        // A v3 answer is read as v3.
        let v3 = ApiVersionsResponse::default()
            .with_api_keys(vec![ApiVersion::default()
                .with_api_key(ApiKey::Heartbeat as i16)
                .with_max_version(4)])
            .with_finalized_features_epoch(7);
        let mut body = BytesMut::new();
        v3.encode(&mut body, 3).unwrap();
        let response = api_versions_answer(body.freeze(), "broker:9092").unwrap();
        assert_eq!((response.error_code, response.api_keys.len()), (0, 1));
        assert_eq!(response.finalized_features_epoch, 7);
    }

    #[tokio::test]
    async fn a_request_abandoned_half_way_leaves_the_connection_unusable() {
        let addr = silent_broker().await;
        let opts = Config {
            brokers: vec![addr.clone()],
            timeout: Duration::from_secs(5),
            ..Config::default()
        };
        let mut conn = WireConnection::connect(&addr, &opts).await.unwrap();
        assert!(!conn.is_broken());
        assert_eq!(conn.version_for::<HeartbeatRequest>(4).unwrap(), 4);

        let unanswered = conn
            .call_within(HeartbeatRequest::default(), 4, Duration::from_millis(50))
            .await;
        assert!(
            unanswered.unwrap_err().to_string().contains("timed out"),
            "a silent broker times out"
        );
        assert!(
            conn.is_broken(),
            "its late answer could be read as the next one's"
        );
        let next = conn.call(HeartbeatRequest::default()).await.unwrap_err();
        assert!(next.to_string().contains("reconnect"), "{next}");

        // A wait dropped by select! (Ctrl-C during a JoinGroup) is just as unfinished.
        let mut conn = WireConnection::connect(&addr, &opts).await.unwrap();
        tokio::select! {
            _ = conn.call(HeartbeatRequest::default()) => unreachable!("never answered"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert!(conn.is_broken());
    }
}
