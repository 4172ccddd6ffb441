//! SASL on a framed connection: SaslHandshake (v1) names the mechanism, then SaslAuthenticate
//! (v2 at most) carries each message of the exchange. The mechanisms themselves (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512) are rsasl's client side, the crate rskafka uses for its own
//! connections.
//!
//! The connection is whatever implements [`Framed`], the little this exchange asks of one:
//! [`super::wire`] runs it while connecting, after negotiating versions, and implements it for
//! its `WireConnection`. So wire depends on this module and not the other way round.

use std::future::Future;
use std::io::Cursor;

use anyhow::Result;
use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::{Request, StrBytes};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

use super::security::Sasl;
use super::Error;

/// A connection that sends one request and reads its answer, at versions negotiated before.
pub trait Framed {
    /// The broker's address, for messages.
    fn addr(&self) -> &str;
    /// Whether the broker takes `R` at some version no higher than `cap`.
    fn offers<R: Request>(&self, cap: i16) -> bool;
    /// `request` at the highest version both sides support, no higher than `cap`.
    fn call_capped<R: Request + Send + Sync>(
        &mut self,
        request: R,
        cap: i16,
    ) -> impl Future<Output = Result<R::Response>> + Send;
}

/// Kafka's UNSUPPORTED_SASL_MECHANISM.
const UNSUPPORTED_MECHANISM: i16 = 33;
/// Kafka's ILLEGAL_SASL_STATE.
const ILLEGAL_STATE: i16 = 34;

/// Authenticate `conn` as `sasl.username`. A refusal is one line naming the user and the
/// mechanism, never the password.
pub async fn authenticate(conn: &mut impl Framed, sasl: &Sasl) -> Result<()> {
    handshake(conn, sasl).await?;
    exchange(conn, sasl).await
}

/// SaslHandshake: the broker must offer `sasl.mechanism`.
async fn handshake(conn: &mut impl Framed, sasl: &Sasl) -> Result<()> {
    let addr = conn.addr().to_string();
    let mechanism = sasl.mechanism.name();
    if !conn.offers::<SaslHandshakeRequest>(1) {
        return Err(Error::refused(format!("{addr} does not offer SASL (no SaslHandshake): is security.protocol right for this listener?")));
    }
    let handshake = conn
        .call_capped(
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
            1,
        )
        .await?;
    match handshake.error_code {
        0 => Ok(()),
        UNSUPPORTED_MECHANISM => {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            Err(Error::refused(format!(
                "{addr} does not offer SASL mechanism {mechanism} (it offers {}): set sasl.mechanism",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            )))
        }
        ILLEGAL_STATE => Err(Error::refused(format!(
            "{addr} refused the SASL handshake (already authenticated?)"
        ))),
        code => Err(Error::refused(format!(
            "{addr} refused the SASL handshake (error {code})"
        ))),
    }
}

/// The mechanism's messages, each in a SaslAuthenticate, until rsasl's side is finished.
async fn exchange(conn: &mut impl Framed, sasl: &Sasl) -> Result<()> {
    let addr = conn.addr().to_string();
    let mechanism = sasl.mechanism.name();
    let user = &sasl.username;
    let config = SASLConfig::with_credentials(None, user.clone(), sasl.password.expose().into())
        .map_err(|e| Error::refused(format!("SASL set-up for user '{user}': {e}")))?;
    let name = Mechname::parse(mechanism.as_bytes()).expect("a valid mechanism name");
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| Error::refused(format!("SASL {mechanism}: {e}")))?;
    let mut received: Option<Bytes> = None;
    loop {
        let mut to_send = Cursor::new(Vec::new());
        let state = session
            .step(received.as_deref(), &mut to_send)
            .map_err(|e| {
                Error::refused(format!(
                    "SASL {mechanism} authentication of user '{user}' with {addr} failed: {e}"
                ))
            })?;
        if state.has_sent_message() {
            let response = conn
                .call_capped(
                    SaslAuthenticateRequest::default()
                        .with_auth_bytes(Bytes::from(to_send.into_inner())),
                    2,
                )
                .await?;
            if response.error_code != 0 {
                let why = response
                    .error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default();
                return Err(Error::refused(format!(
                    "authentication failed: {addr} refused user '{user}' (SASL {mechanism}){why}; check sasl.username, sasl.password and sasl.mechanism"
                )));
            }
            received = Some(response.auth_bytes);
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}
