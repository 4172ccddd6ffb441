//! A Kafka-aware front for the test broker that hides partitions: Metadata answers passing
//! through it list only the first `visible` partitions of every topic. Raising `visible` is how
//! a test "adds partitions" on a broker that has no CreatePartitions (tansu 0.6): the topic is
//! created with all of them, and clients are shown more of them later.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

pub struct PartitionFront {
    pub port: u16,
    visible: Arc<AtomicUsize>,
}

impl PartitionFront {
    /// Listen on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: &str, visible: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let visible = Arc::new(AtomicUsize::new(visible));
        let (shown, upstream) = (Arc::clone(&visible), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let asked = Arc::new(Mutex::new(HashMap::new()));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let asked2 = Arc::clone(&asked);
                std::thread::spawn(move || requests(client, server, asked));
                let shown = Arc::clone(&shown);
                std::thread::spawn(move || responses(s2, c2, asked2, shown));
            }
        });
        Self { port, visible }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn show(&self, partitions: usize) {
        self.visible.store(partitions, Ordering::SeqCst);
    }
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> Option<()> {
    stream.write_all(&(body.len() as i32).to_be_bytes()).ok()?;
    stream.write_all(body).ok()
}

/// Client → broker: note each request's api key and version by correlation id.
fn requests(
    mut client: TcpStream,
    mut server: TcpStream,
    asked: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
) {
    while let Some(body) = read_frame(&mut client) {
        let key = i16::from_be_bytes([body[0], body[1]]);
        let version = i16::from_be_bytes([body[2], body[3]]);
        let correlation = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        asked.lock().unwrap().insert(correlation, (key, version));
        if write_frame(&mut server, &body).is_none() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
}

/// Broker → client: Metadata answers lose every partition from `visible` on.
fn responses(
    mut server: TcpStream,
    mut client: TcpStream,
    asked: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    visible: Arc<AtomicUsize>,
) {
    while let Some(body) = read_frame(&mut server) {
        let correlation = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let request = asked.lock().unwrap().remove(&correlation);
        let body = match request {
            Some((key, version)) if key == ApiKey::Metadata as i16 => {
                hide(body, version, visible.load(Ordering::SeqCst))
            }
            _ => body,
        };
        if write_frame(&mut client, &body).is_none() {
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
}

fn hide(body: Vec<u8>, version: i16, visible: usize) -> Vec<u8> {
    let header_version = MetadataResponse::header_version(version);
    let mut buf = Bytes::from(body);
    let header = ResponseHeader::decode(&mut buf, header_version).unwrap();
    let mut response = MetadataResponse::decode(&mut buf, version).unwrap();
    for topic in &mut response.topics {
        topic
            .partitions
            .retain(|p| (p.partition_index as usize) < visible);
    }
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).unwrap();
    response.encode(&mut out, version).unwrap();
    out.to_vec()
}
