//! `--metrics-addr`: the Prometheus text scraped from it over
//! plain HTTP (the numbers a running `produce` or `consume` publishes for machines).

use std::io::{Read, Write};
use std::net::TcpStream;

/// `GET /metrics` on 127.0.0.1:`port`: the text, or None if nothing answered 200.
pub fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// The sum of every sample of `name` (across its label sets) in a scrape (0 if absent).
pub fn total(scraped: &str, name: &str) -> f64 {
    scraped
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
