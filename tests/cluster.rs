//! streamlab on a three-broker cluster: tests/support/cluster.rs makes the test broker look like
//! brokers 1–3 with leaders spread over them, a coordinator per group, and leaders that move and
//! brokers that die. Each scenario runs librdkafka (confluent-kafka) through the same front
//! first — what it survives, streamlab must survive — then streamlab's produce and consume, and
//! asserts the exact id set, stored and Kafka group offsets equal to the log ends, and that every
//! request was served by the partition's leader or the group's coordinator.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

use crate::support::cluster::{preferred_leader, Cluster, Route, NODES};
use crate::support::*;

/// Long enough for a rebalance after a coordinator moves (session 6 s), on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// One run: a topic, a group, a producer at a rate, `members` consumers in the group, and a
/// fault applied once a quarter of the events are consumed.
struct Scenario {
    partitions: u32,
    members: usize,
    count: usize,
    rate: usize,
}

/// What a fault is given: the cluster, the topic, the group, and how many distinct events the
/// consumers have stored so far (to wait on progress between steps).
struct Live<'a> {
    cluster: &'a Cluster,
    topic: &'a str,
    group: &'a str,
    consumed: &'a dyn Fn() -> usize,
}

impl Live<'_> {
    /// Once the consumers have stored a quarter of the `count` events, apply `fault`.
    fn fault_after_a_quarter(&self, count: usize, who: &str, fault: impl Fn(&Live)) {
        let what = format!("{who} to consume a quarter");
        wait_for(PATIENCE, &what, || (self.consumed)() >= count / 4);
        fault(self);
    }

    /// Wait until the consumers have stored `more` events beyond what they had.
    fn advance(&self, more: usize, what: &str) {
        let from = (self.consumed)();
        wait_for(
            PATIENCE,
            &format!("{more} more events consumed {what}"),
            || (self.consumed)() >= from + more,
        );
    }
}

fn wait_for(limit: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(within(limit, done), "timed out waiting for {what}");
}

/// Whether `done` holds within `limit`, asked every 100 ms.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The last lines a process printed.
fn tail(process: &Running) -> String {
    let lines = process.lines();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

// --- librdkafka first ---------------------------------------------------------------------------

fn rdkafka(cluster: &Cluster, args: &[&str]) -> Running {
    let mut python = Command::new(rdkafka_python());
    python
        .arg(py_script("rdkafka_cluster.py"))
        .args(args)
        .env("STREAMLAB_BROKERS", cluster.bootstrap());
    Running::start(python, true)
}

fn events(process: &Running) -> Vec<serde_json::Value> {
    process
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn rdkafka_ids(members: &[Running]) -> BTreeSet<String> {
    members
        .iter()
        .flat_map(events)
        .flat_map(|e| e["ids"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

/// librdkafka's producer and consumers through a fresh cluster, `fault` applied on the way:
/// every event produced is acknowledged, and consumed. Returns the cluster to look at.
fn librdkafka_survives(s: &Scenario, fault: impl Fn(&Live)) -> Cluster {
    let cluster = Cluster::start(&brokers());
    let topic = topic_via(&cluster.bootstrap(), "cl-rk", s.partitions, &[]);
    let group = unique("g-rk");
    let members: Vec<Running> = (0..s.members)
        .map(|_| rdkafka(&cluster, &["consume", &group, &topic]))
        .collect();
    let (count, rate) = (s.count.to_string(), s.rate.to_string());
    let producer = rdkafka(&cluster, &["produce", &topic, &count, &rate]);
    let consumed = || rdkafka_ids(&members).len();
    let live = Live {
        cluster: &cluster,
        topic: &topic,
        group: &group,
        consumed: &consumed,
    };
    live.fault_after_a_quarter(s.count, "librdkafka", fault);
    let produced = producer.exit_within(PATIENCE, "librdkafka's producer");
    let last = produced.json_lines().last().cloned().unwrap();
    assert_eq!(
        (last["acked"].as_u64(), last["failed"].as_u64()),
        (Some(s.count as u64), Some(0)),
        "librdkafka's producer: {}",
        produced.stderr
    );
    wait_for(PATIENCE, "librdkafka to consume every event", || {
        consumed() >= s.count
    });
    let expected: BTreeSet<String> = (0..s.count).map(|i| format!("rk-{i}")).collect();
    assert_eq!(rdkafka_ids(&members), expected);
    for member in members {
        let out = member.wait();
        assert!(out.succeeded(), "a librdkafka member: {}", out.stderr);
    }
    cluster
}

// --- then streamlab -----------------------------------------------------------------------------

/// What streamlab's run left: the cluster, its topic and group, each member's output.
struct Outcome {
    cluster: Cluster,
    topic: String,
    members: Vec<crate::support::Run>,
    producer: crate::support::Run,
}

/// streamlab's produce and `members` consume group members through a fresh cluster into `db`,
/// `fault` applied on the way; then the exact id set, stored offsets and Kafka's group offsets
/// equal to the log ends, and no member ever exited on its own.
fn streamlab_survives(s: &Scenario, db: &TestDb, fault: impl Fn(&Live)) -> Outcome {
    let cluster = Cluster::start(&brokers());
    let bootstrap = cluster.bootstrap();
    let topic = topic_via(&bootstrap, "cl", s.partitions, &[]);
    let group = unique("g");
    let seed = rand::random::<u32>() as u64;
    streamlab("migrate").db(db).ok();
    let mut members: Vec<Running> = (0..s.members)
        .map(|_| {
            streamlab("consume")
                .brokers(&bootstrap)
                .topic(&topic)
                .db(db)
                .group(&group)
                .session_timeout("6s")
                .timeout("10s")
                .json()
                .spawn()
        })
        .collect();
    let producer = streamlab("produce")
        .brokers(&bootstrap)
        .topic(&topic)
        .count(s.count)
        .rate(s.rate)
        .seed(seed)
        .json()
        .spawn();
    let consumed = || db.count("sales_events") as usize;
    let live = Live {
        cluster: &cluster,
        topic: &topic,
        group: &group,
        consumed: &consumed,
    };
    live.fault_after_a_quarter(s.count, "streamlab", fault);
    let produced = producer
        .exit_within(PATIENCE, "streamlab produce")
        .success();
    assert_eq!(produced.json()["sent"].as_u64(), Some(s.count as u64));
    let stored = within(PATIENCE, || consumed() >= s.count);
    assert!(
        stored,
        "streamlab stored {} of {} events; the members said:\n{}",
        consumed(),
        s.count,
        members.iter().map(tail).collect::<Vec<_>>().join("\n---\n")
    );
    for member in &mut members {
        assert!(member.is_running(), "a member exited:\n{}", member.output());
    }
    let members: Vec<_> = members
        .into_iter()
        .map(|m| m.terminate().success())
        .collect();

    // A partition no event was keyed to has no stored position (nothing to read).
    let mut ends = end_offsets_via(&bootstrap, &topic);
    ends.retain(|_, end| *end > 0);
    assert_eq!(db.sales_ids(), seeded_ids(seed, s.count), "the stored ids");
    assert_eq!(db.stored_offsets(&topic), ends, "the stored offsets");
    assert_eq!(
        committed_in_kafka(&group, &topic),
        ends,
        "Kafka's group offsets"
    );
    let in_topic: BTreeSet<String> = event_ids(&read_back(&topic)).into_iter().collect();
    assert_eq!(in_topic, seeded_ids(seed, s.count), "the ids in the topic");
    Outcome {
        cluster,
        topic,
        members,
        producer: produced,
    }
}

fn warnings(outcome: &Outcome) -> String {
    outcome
        .members
        .iter()
        .flat_map(|m| m.stderr.lines().filter(|l| l.contains("WARN")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requests of `api` served (not refused) at `node`, among `routes`.
fn served(routes: &[Route], api: ApiKey, node: i32) -> usize {
    routes
        .iter()
        .filter(|r| r.api == api && r.node == node && r.refused.is_none())
        .count()
}

/// How long after `since` a request of one of `apis` for `target` was first served: the time to
/// recover from what the test did then. Printed for the figures in docs/cluster.md, and bounded by
/// `--timeout` (10 s here), as the issue asks.
fn recovery(out: &Outcome, since: &str, apis: &[ApiKey], target: &str) -> Duration {
    let at = out.cluster.when(since);
    let first = out
        .cluster
        .routes()
        .into_iter()
        .find(|r| r.at > at && apis.contains(&r.api) && r.target == target && r.refused.is_none())
        .unwrap_or_else(|| panic!("no {apis:?} for {target} served after '{since}'"));
    let took = first.at - at;
    eprintln!(
        "recovery: {apis:?} {target} served by broker {} {took:?} after '{since}'",
        first.node
    );
    assert!(
        took < Duration::from_secs(10),
        "{target} recovered only {took:?} after '{since}'"
    );
    took
}

// --- The scenarios ------------------------------------------------------------------------------

#[test]
fn sixty_thousand_events_each_sent_to_its_leader_and_every_group_request_to_the_coordinator() {
    let s = Scenario {
        partitions: 6,
        members: 1,
        count: 20_000,
        rate: 0,
    };
    let rk = librdkafka_survives(&s, |_| {});
    assert_eq!(rk.misrouted(), Vec::<Route>::new(), "librdkafka misrouted");

    let db = TestDb::pg();
    let s = Scenario { count: 60_000, ..s };
    let out = streamlab_survives(&s, &db, |_| {});
    let routes = out.cluster.routes();
    assert_eq!(
        out.cluster.misrouted(),
        Vec::<Route>::new(),
        "streamlab misrouted"
    );
    for node in NODES {
        for api in [ApiKey::Produce, ApiKey::Fetch] {
            assert!(
                served(&routes, api, node) > 0,
                "no {api:?} at broker {node}"
            );
        }
    }
    let coordinator = out.cluster.coordinator(&routes_group(&routes));
    for api in [ApiKey::JoinGroup, ApiKey::SyncGroup, ApiKey::OffsetCommit] {
        assert!(
            served(&routes, api, coordinator) > 0,
            "no {api:?} at the coordinator"
        );
    }
}

/// The group the routes name (the scenario's only one).
fn routes_group(routes: &[Route]) -> String {
    routes
        .iter()
        .find_map(|r| r.target.strip_prefix("group:"))
        .expect("a group request")
        .to_string()
}

#[test]
fn a_broker_killed_mid_run_costs_nothing_and_its_partitions_are_served_elsewhere() {
    let s = Scenario {
        partitions: 6,
        members: 1,
        count: 12_000,
        rate: 2_000,
    };
    let kill_leader_of_0 = |run: &Live| {
        let victim = run.cluster.leader(run.topic, 0);
        run.cluster.kill(victim);
        assert_ne!(run.cluster.leader(run.topic, 0), victim);
        run.advance(1_000, "after the kill");
    };
    librdkafka_survives(&s, kill_leader_of_0);

    let db = TestDb::pg();
    let out = streamlab_survives(&s, &db, kill_leader_of_0);
    let (victim, partition_0) = (preferred_leader(0), format!("{}/0", out.topic));
    let since = format!("kill {victim}");
    recovery(&out, &since, &[ApiKey::Produce], &partition_0);
    recovery(&out, &since, &[ApiKey::Fetch], &partition_0);
    // One WARN line each, naming what moved: the consumer's reader and the producer.
    let moved = format!("the leader of {partition_0} moved");
    let said = warnings(&out);
    assert_eq!(
        said.matches(&moved).count(),
        1,
        "the consumer said:\n{said}"
    );
    let producer_said = &out.producer.stderr;
    assert_eq!(
        producer_said.matches(&moved).count(),
        1,
        "produce said:\n{producer_said}"
    );
}

#[test]
fn the_coordinator_killed_under_three_members_keeps_them_up_and_every_offset_in_kafka() {
    let s = Scenario {
        partitions: 6,
        members: 3,
        count: 9_000,
        rate: 1_500,
    };
    let kill_coordinator = |run: &Live| {
        let victim = run.cluster.coordinator(run.group);
        run.cluster.kill(victim);
        assert_ne!(run.cluster.coordinator(run.group), victim);
        run.advance(1_000, "after the coordinator died");
    };
    librdkafka_survives(&s, kill_coordinator);

    let db = TestDb::sqlite();
    let out = streamlab_survives(&s, &db, kill_coordinator);
    let group = routes_group(&out.cluster.routes());
    let target = format!("group:{group}");
    let routes = out.cluster.routes();
    let victim = routes.iter().find(|r| r.target == target).unwrap().owner;
    let apis = [ApiKey::Heartbeat, ApiKey::OffsetCommit, ApiKey::JoinGroup];
    recovery(&out, &format!("kill {victim}"), &apis, &target);
    let said = warnings(&out);
    assert!(
        said.contains("coordinator"),
        "no warning named the coordinator:\n{said}"
    );
}

#[test]
fn leadership_moved_back_and_forth_during_a_run() {
    let s = Scenario {
        partitions: 3,
        members: 1,
        count: 12_000,
        rate: 2_000,
    };
    let shuffle = |run: &Live| {
        for round in 1..=2 {
            for p in 0..3 {
                let next = NODES[((preferred_leader(p) + round - 1) % 3) as usize];
                run.cluster.move_leader(run.topic, p, next);
            }
            run.advance(800, &format!("after move {round}"));
        }
        run.cluster.elect_preferred_leaders();
        run.advance(800, "after the leaders moved back");
    };
    librdkafka_survives(&s, shuffle);

    let db = TestDb::pg();
    let out = streamlab_survives(&s, &db, shuffle);
    let refused = out
        .cluster
        .routes()
        .iter()
        .filter(|r| r.refused == Some(ResponseError::NotLeaderOrFollower))
        .count();
    assert!(
        refused > 0,
        "no request met a moved leader: the moves did not land"
    );
}

#[test]
fn a_revived_broker_is_used_again_and_a_loading_coordinator_is_waited_for() {
    let s = Scenario {
        partitions: 6,
        members: 1,
        count: 12_000,
        rate: 2_000,
    };
    let down_and_up = |run: &Live| {
        run.cluster.kill(2);
        run.advance(1_000, "while broker 2 is down");
        run.cluster.revive(2);
        run.cluster.elect_preferred_leaders();
        run.cluster.move_coordinator(run.group, 2);
        run.cluster
            .coordinator_trouble(run.group, ResponseError::CoordinatorLoadInProgress, 3);
        run.advance(1_000, "after broker 2 came back");
    };
    librdkafka_survives(&s, down_and_up);

    let db = TestDb::sqlite();
    let out = streamlab_survives(&s, &db, down_and_up);
    let routes = out.cluster.routes();
    let last_refused_at_2 = routes
        .iter()
        .rposition(|r| r.node == 2 && r.refused == Some(ResponseError::CoordinatorLoadInProgress))
        .expect("the loading coordinator was never asked: the move did not land");
    let later = &routes[last_refused_at_2..];
    for api in [ApiKey::Produce, ApiKey::Fetch, ApiKey::OffsetCommit] {
        assert!(
            served(later, api, 2) > 0,
            "broker 2 served no {api:?} after it came back"
        );
    }
}

/// Every command that talks to Kafka, with broker 1 — the first bootstrap address — dead and a
/// leader moved before any of them ran: each finds a live broker, the leaders and the
/// coordinator, and nothing is misrouted.
#[test]
fn every_operator_command_works_with_the_first_bootstrap_broker_dead() {
    let cluster = Cluster::start(&brokers());
    let b = cluster.bootstrap();
    let topic = topic_via(&b, "cl-ops", 3, &[]);
    produce(&topic, 2_000).brokers(&b).seed(11).ok();
    produce_raw(&topic, 0, b"bad", vec![Some(b"not json".to_vec())]);
    cluster.kill(1);
    cluster.move_leader(&topic, 1, 3);
    let (db, group) = (TestDb::pg(), unique("g-ops"));

    let summary = drain(&topic, &db)
        .brokers(&b)
        .group(&group)
        .json()
        .ok_json();
    assert_eq!(counted(&summary, "dead_lettered"), 1);
    assert_eq!(db.sales_ids(), seeded_ids(11, 2_000));
    let ends = end_offsets_via(&b, &topic);
    assert_eq!(db.stored_offsets(&topic), ends);
    assert_eq!(committed_in_kafka(&group, &topic), ends);

    // Healthy but for the one dead letter, which check reports (exit 1).
    let checked = streamlab("check")
        .brokers(&b)
        .topic(&topic)
        .group(&group)
        .db(&db)
        .max_lag(0)
        .json()
        .run();
    let report: serde_json::Value = serde_json::from_str(&checked.stdout).unwrap();
    let failing: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        (checked.code, failing),
        (Some(1), vec!["dead_letters"]),
        "{}",
        checked.stderr
    );
    let watched = streamlab("watch")
        .brokers(&b)
        .topic(&topic)
        .group(&group)
        .db(&db)
        .count(1)
        .run()
        .success()
        .json_lines();
    assert_eq!(watched[0]["total"]["lag"], 0);
    let listed = streamlab("group list").brokers(&b).json().ok_json();
    assert!(listed.to_string().contains(&group), "{listed}");
    let described = streamlab("group describe")
        .brokers(&b)
        .group(&group)
        .db(&db)
        .json()
        .ok_json();
    assert!(described.to_string().contains(&topic), "{described}");

    streamlab("offsets reset")
        .brokers(&b)
        .group(&group)
        .topic(&topic)
        .db(&db)
        .arg("--to-earliest")
        .execute()
        .ok();
    let again = drain(&topic, &db)
        .brokers(&b)
        .group(&group)
        .json()
        .ok_json();
    assert_eq!(counted(&again, "duplicates"), 2_000, "{again}");
    assert_eq!(db.stored_offsets(&topic), ends);

    let fixed = topic_via(&b, "cl-fixed", 1, &[]);
    streamlab("dlq replay")
        .brokers(&b)
        .db(&db)
        .args(["--to-topic", &fixed])
        .ok();
    let replayed = read_back(&fixed);
    assert!(
        !replayed.is_empty() && replayed.iter().all(|r| r["value"] == "not json"),
        "{replayed:?}"
    );

    streamlab("topic retention")
        .brokers(&b)
        .topic(&topic)
        .args(["--set", "1d"])
        .ok();
    streamlab("topic config")
        .brokers(&b)
        .topic(&topic)
        .args(["--set", "segment.ms=3600000"])
        .ok();
    assert!(streamlab("topic list").brokers(&b).ok().contains(&topic));
    streamlab("topic delete").brokers(&b).topic(&topic).ok();
    assert_eq!(cluster.misrouted(), Vec::<Route>::new(), "misrouted");
}
