//! What a failed broker call calls for, and the one retry loop with a deadline that every call
//! which follows a moving cluster goes through (group coordinators, partition readers).
//!
//! On a cluster, leadership and coordinatorships move: a partition's leader answers
//! NOT_LEADER_OR_FOLLOWER once it is not any more, a coordinator NOT_COORDINATOR, and a broker
//! that dies closes its connections and refuses new ones. None of that is a reason to stop:
//! the caller looks the leader or coordinator up again and retries, for up to `--timeout` after
//! the first failure. Errors are classified by their [`super::Error`] variant
//! ([`super::Error::Broker`] for an error code, [`super::Error::Connection`] for a connection) or
//! an I/O error, never by their text.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use kafka_protocol::error::ResponseError;

use super::wire::ConnectionError;

/// What a failed broker call calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The partition's leader moved or the connection broke (or was refused): look the leader up
    /// again (fresh metadata, a new connection) and retry.
    Refresh,
    /// The group's coordinator moved or is not there yet: ask FindCoordinator again and retry.
    Coordinator,
    /// The broker is busy (a coordinator loading its groups, a request that timed out on its
    /// side): the same again after a short pause.
    Wait,
    /// No retry helps.
    Fatal,
}

impl Retry {
    /// The class of a broker's error code.
    pub fn of_code(code: ResponseError) -> Self {
        use ResponseError as E;
        match code {
            E::NotLeaderOrFollower
            | E::LeaderNotAvailable
            | E::UnknownTopicOrPartition
            | E::FencedLeaderEpoch
            | E::UnknownLeaderEpoch
            | E::ReplicaNotAvailable
            | E::NetworkException
            | E::KafkaStorageError => Retry::Refresh,
            E::NotCoordinator | E::CoordinatorNotAvailable => Retry::Coordinator,
            E::CoordinatorLoadInProgress
            | E::RequestTimedOut
            | E::OffsetNotAvailable
            | E::UnknownServerError => Retry::Wait,
            _ => Retry::Fatal,
        }
    }

    /// The class of a failed call: a broker's error code by its code, a connection that broke,
    /// was refused or went unanswered as [`Retry::Refresh`], anything else (a security refusal,
    /// an undecodable answer) as [`Retry::Fatal`].
    pub fn of(err: &anyhow::Error) -> Self {
        match super::Error::of(err) {
            Some(super::Error::Broker(b)) => Self::of_code(b.code),
            Some(super::Error::Connection(ConnectionError::AnsweredTls)) => Retry::Fatal,
            Some(super::Error::Connection(_)) => Retry::Refresh,
            Some(_) => Retry::Fatal,
            None if err.chain().any(|c| c.is::<std::io::Error>()) => Retry::Refresh,
            None => Retry::Fatal,
        }
    }
}

/// A broker answered a request (or one topic, partition or group in it) with an error code.
/// Made only inside a [`super::Error::Broker`], where callers look for it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {code}{detail}")]
pub struct BrokerError {
    pub code: ResponseError,
    pub what: String,
    /// The broker's own message, `": …"`, or empty.
    pub detail: String,
}

impl BrokerError {
    /// The error code a broker answered, where `err` came from such an answer.
    pub fn code_in(err: &anyhow::Error) -> Option<ResponseError> {
        match super::Error::of(err) {
            Some(super::Error::Broker(b)) => Some(b.code),
            _ => None,
        }
    }

    /// `Err` ([`super::Error::Broker`]) when `code` is an error, naming `what` was asked and the
    /// broker's message.
    pub fn check(
        code: i16,
        message: Option<&str>,
        what: impl FnOnce() -> String,
    ) -> Result<(), super::Error> {
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(code) => Err(super::Error::Broker(Self {
                code,
                what: what(),
                detail: message.map(|m| format!(": {m}")).unwrap_or_default(),
            })),
        }
    }
}

/// Retries of one call: the first failure starts a clock of `--timeout`; until it runs out, each
/// retriable failure waits a little longer (100 ms doubling to 1 s) and goes again.
#[derive(Debug)]
pub struct Retrying {
    timeout: Duration,
    first_failure: Option<Instant>,
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

impl Retrying {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            first_failure: None,
            pause: FIRST_PAUSE,
        }
    }

    /// After `err`: its class, once the pause before the next attempt is over; or `err` itself
    /// when it is not retriable or the clock ran out.
    pub async fn after(&mut self, err: anyhow::Error) -> anyhow::Result<Retry> {
        let class = Retry::of(&err);
        if class == Retry::Fatal {
            return Err(err);
        }
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.timeout {
            return Err(err.context(format!(
                "still failing after {}",
                humantime::format_duration(self.timeout)
            )));
        }
        // A moved leader or coordinator is usually named at once: the first retry goes at once.
        let pause = if class == Retry::Wait || self.pause > FIRST_PAUSE {
            self.pause
        } else {
            Duration::ZERO
        };
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        tokio::time::sleep(pause).await;
        Ok(class)
    }
}

/// What this process learnt about the cluster, shared by every connection made from one
/// [`super::Config`] (clones share it): brokers seen in metadata, the last broker that answered,
/// and where each partition's leader and each group's coordinator were last found — so a move
/// is said once, on one WARN line, however many readers notice it.
#[derive(Debug, Default)]
pub struct Cluster {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Broker addresses from Metadata answers, besides the bootstrap list.
    learnt: Vec<String>,
    /// The last address a connection was made to.
    answered: Option<String>,
    /// `topic/partition` or `group` → where it was last found.
    found: BTreeMap<String, String>,
}

impl Cluster {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The addresses to try, in order: the one that answered last, the bootstrap list, then the
    /// brokers metadata named (a dead bootstrap broker then costs one refused connection).
    pub fn addresses(&self, bootstrap: &[String]) -> Vec<String> {
        let state = self.state();
        let mut out: Vec<String> = Vec::new();
        let all = state.answered.iter().chain(bootstrap).chain(&state.learnt);
        for addr in all {
            if !out.contains(addr) {
                out.push(addr.clone());
            }
        }
        out
    }

    pub fn answered(&self, addr: &str) {
        self.state().answered = Some(addr.to_string());
    }

    pub fn learn(&self, brokers: impl IntoIterator<Item = String>) {
        let mut state = self.state();
        for addr in brokers {
            if !state.learnt.contains(&addr) {
                state.learnt.push(addr);
            }
        }
    }

    /// Record that `what` (a partition or a group) is at `addr`. Returns where it was before
    /// when that is somewhere else: the caller says so, once for the whole process.
    pub fn found(&self, what: &str, addr: &str) -> Option<String> {
        let before = self
            .state()
            .found
            .insert(what.to_string(), addr.to_string());
        before.filter(|b| b != addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_by_what_they_call_for() {
        use ResponseError as E;
        assert_eq!(Retry::of_code(E::NotLeaderOrFollower), Retry::Refresh);
        assert_eq!(Retry::of_code(E::UnknownTopicOrPartition), Retry::Refresh);
        assert_eq!(Retry::of_code(E::LeaderNotAvailable), Retry::Refresh);
        assert_eq!(Retry::of_code(E::NotCoordinator), Retry::Coordinator);
        assert_eq!(
            Retry::of_code(E::CoordinatorNotAvailable),
            Retry::Coordinator
        );
        assert_eq!(Retry::of_code(E::CoordinatorLoadInProgress), Retry::Wait);
        assert_eq!(Retry::of_code(E::GroupAuthorizationFailed), Retry::Fatal);

        let coded = anyhow::Error::new(crate::kafka::Error::Broker(BrokerError {
            code: E::NotCoordinator,
            what: "committing".into(),
            detail: String::new(),
        }))
        .context("mirroring");
        assert_eq!(BrokerError::code_in(&coded), Some(E::NotCoordinator));
        assert_eq!(Retry::of(&coded), Retry::Coordinator);
        let refused =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                .context("cannot reach Kafka at 127.0.0.1:1");
        assert_eq!(Retry::of(&refused), Retry::Refresh);
        assert_eq!(Retry::of(&anyhow::anyhow!("undecodable")), Retry::Fatal);
        let broken = crate::kafka::Error::from(ConnectionError::Broken("b:1".into()));
        assert_eq!(Retry::of(&broken.into()), Retry::Refresh);
        let tls = crate::kafka::Error::from(ConnectionError::AnsweredTls);
        assert_eq!(Retry::of(&tls.into()), Retry::Fatal);
        let refused = crate::kafka::Error::refused("TLS: no").context("connecting");
        assert_eq!(Retry::of(&refused), Retry::Fatal);
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline_counted_from_the_first_failure() {
        let mut retrying = Retrying::new(Duration::from_millis(700));
        let refused = || anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let start = tokio::time::Instant::now();
        let mut tries = 0;
        while retrying.after(refused()).await.is_ok() {
            tries += 1;
        }
        assert!(tries >= 3, "{tries}");
        assert!(start.elapsed() >= Duration::from_millis(700));
        let fatal = Retrying::new(Duration::from_secs(2))
            .after(anyhow::anyhow!("no"))
            .await;
        assert!(fatal.is_err());
    }

    #[test]
    fn a_move_is_reported_once_and_known_addresses_come_in_order() {
        let cluster = Cluster::default();
        assert_eq!(cluster.found("g", "a:1"), None);
        assert_eq!(cluster.found("g", "a:1"), None);
        assert_eq!(cluster.found("g", "b:2"), Some("a:1".into()));
        assert_eq!(cluster.found("g", "b:2"), None);

        cluster.learn(["c:3".to_string(), "a:1".to_string()]);
        cluster.answered("c:3");
        assert_eq!(
            cluster.addresses(&["a:1".to_string(), "b:2".to_string()]),
            ["c:3", "a:1", "b:2"]
        );
    }
}
