//! A canned broker for unit tests: a local listener that negotiates versions and answers each
//! later request with what a test's handler returns for it (or closes the connection).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response body and the header version its api and version use.
pub struct Answer {
    header_version: i16,
    body: BytesMut,
}

/// `response` encoded at `version`.
pub fn answer<R: Encodable + HeaderVersion>(response: &R, version: i16) -> Answer {
    let mut body = BytesMut::new();
    response.encode(&mut body, version).unwrap();
    Answer {
        header_version: R::header_version(version),
        body,
    }
}

/// What a handler is asked: the api and version of a request. `None` closes the connection.
pub type Handler = Arc<dyn Fn(ApiKey, i16) -> Option<Answer> + Send + Sync>;

/// The apis the fake broker says it supports (every version the crate knows, capped low
/// enough to keep the tests' answers simple).
const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Metadata, 1, 12),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
];

/// Listen on a free loopback port; each connection is answered by `handler`.
pub async fn broker(handler: Handler) -> String {
    broker_knowing(|_| handler).await
}

/// [`broker`], with a handler made knowing the broker's own address.
pub async fn broker_knowing(make: impl FnOnce(String) -> Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handler = make(addr.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&handler)));
        }
    });
    addr
}

/// An address nothing listens on: connections to it are refused (a dead broker).
pub async fn dead() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn serve(mut stream: TcpStream, handler: Handler) {
    loop {
        let Ok(size) = stream.read_i32().await else {
            return;
        };
        let mut request = vec![0u8; usize::try_from(size).unwrap()];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let key = i16::from_be_bytes([request[0], request[1]]);
        let version = i16::from_be_bytes([request[2], request[3]]);
        let correlation_id = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
        let key = ApiKey::try_from(key).unwrap();
        let answered = if key == ApiKey::ApiVersions {
            Some(api_versions(version))
        } else {
            handler(key, version)
        };
        let Some(answered) = answered else {
            return; // drop the connection
        };
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, answered.header_version)
            .unwrap();
        frame.extend_from_slice(&answered.body);
        let size = i32::try_from(frame.len() - 4).unwrap();
        frame[..4].copy_from_slice(&size.to_be_bytes());
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

fn api_versions(version: i16) -> Answer {
    let mut keys = vec![ApiVersion::default()
        .with_api_key(ApiKey::ApiVersions as i16)
        .with_max_version(3)];
    keys.extend(APIS.iter().map(|&(key, min, max)| {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }));
    let response = ApiVersionsResponse::default().with_api_keys(keys);
    let mut body = BytesMut::new();
    response.encode(&mut body, version).unwrap();
    // ApiVersions answers always use header v0.
    Answer {
        header_version: 0,
        body,
    }
}
