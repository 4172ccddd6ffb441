//! `consume --group`: consumers of one group are its members and share the topic's partitions
//! through Kafka's consumer-group protocol, hand them over when one joins, leaves or dies, and
//! together store every event exactly once. And `streamlab group list|describe`, which show a
//! group as Kafka sees it, the database's offsets beside.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// Session timeout given to every member here: the shortest Apache Kafka accepts by default.
const SESSION: Duration = Duration::from_secs(6);

/// A group member running in the background, its output collected line by line.
struct Member {
    name: &'static str,
    process: Running,
    /// A streamlab member's `group describe` (its assignment as the database recorded it).
    describe: Option<(Cmd, String)>,
}

impl Member {
    /// `consume --topic T --sink S -D URL --group G --session-timeout 6s --batch-size 500
    /// --format json`.
    fn streamlab(name: &'static str, db: &TestDb, topic: &str, group: &str) -> Self {
        let process = streamlab("consume")
            .topic(topic)
            .db(db)
            .group(group)
            .session_timeout("6s")
            .batch_size(500)
            .json()
            .spawn();
        let describe = Some((describe_members(group, topic, db), topic.to_string()));
        Self {
            name,
            process,
            describe,
        }
    }

    /// A librdkafka consumer in the same group (it takes part in the protocol, stores nothing;
    /// it leaves when its stdin closes).
    fn librdkafka(name: &'static str, topic: &str, group: &str, strategy: &str) -> Self {
        let mut python = Command::new(rdkafka_python());
        python
            .arg(py_script("rdkafka_client.py"))
            .args(["member", group, topic, strategy])
            .env("STREAMLAB_BROKERS", brokers());
        Self {
            name,
            process: Running::start(python, true),
            describe: None,
        }
    }

    fn output(&self) -> String {
        self.process.output()
    }

    /// The latest assignment this member reported: (generation, partitions) — a streamlab
    /// member's as `group describe` shows it, librdkafka's from its JSON events (its callbacks
    /// carry no generation: its assignments count as generation -1).
    fn current(&self) -> Option<(i32, BTreeSet<i32>)> {
        if let Some((describe, topic)) = &self.describe {
            return self.process.assignment_via(describe, topic);
        }
        let mut current = None;
        for line in self.process.lines() {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(assigned) = event["assigned"].as_array() {
                    let ps = assigned.iter().map(|p| p.as_i64().unwrap() as i32);
                    current = Some((-1, ps.collect()));
                } else if event.get("revoked").is_some() || event.get("left").is_some() {
                    current = Some((-1, BTreeSet::new()));
                }
            }
        }
        current
    }

    /// Stop the way an operator does (Ctrl-C / closing the program) and return what it printed.
    fn stop(mut self) -> Run {
        let out = match self.process.stdin.take() {
            Some(stdin) => {
                drop(stdin);
                self.process.wait()
            }
            None => self.process.terminate(),
        };
        assert!(
            out.succeeded(),
            "{} exited {:?}:\n{}{}",
            self.name,
            out.code,
            out.stdout,
            out.stderr
        );
        out
    }
}

/// Wait until `members`' current assignments give every partition of `0..partitions` to exactly
/// one of them, in one generation newer than `after`. Returns that generation and who has what.
fn wait_for_settled(
    members: &[&Member],
    partitions: i32,
    after: i32,
    within: Duration,
) -> (i32, BTreeMap<&'static str, BTreeSet<i32>>) {
    let deadline = Instant::now() + within;
    loop {
        let current: Vec<_> = members.iter().map(|m| (m.name, m.current())).collect();
        if current.iter().all(|(_, c)| c.is_some()) {
            let generations: BTreeSet<i32> = current
                .iter()
                .map(|(_, c)| c.as_ref().unwrap().0)
                .filter(|g| *g >= 0)
                .collect();
            let mut seen = Vec::new();
            for (_, c) in &current {
                seen.extend(c.as_ref().unwrap().1.iter().copied());
            }
            seen.sort_unstable();
            let generation = generations.iter().next().copied().unwrap_or(-1);
            if generations.len() == 1
                && generation > after
                && seen == (0..partitions).collect::<Vec<_>>()
            {
                let who = current
                    .into_iter()
                    .map(|(name, c)| (name, c.unwrap().1))
                    .collect();
                return (generation, who);
            }
        }
        if Instant::now() > deadline {
            let dump: Vec<String> = members
                .iter()
                .map(|m| format!("--- {} ({:?}):\n{}", m.name, m.current(), m.output()))
                .collect();
            panic!(
                "no generation after {after} assigned all {partitions} partitions exactly once \
                 within {within:?}:\n{}",
                dump.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Members' inserted counts that do not add up, told apart: what each counted, the rows the
/// database holds, and its stored offsets against the log ends (a partition nobody read shows).
fn counted_apart(inserted_by: &[u64], db: &TestDb, topic: &str) -> String {
    format!(
        "each event inserted by exactly one member: {inserted_by:?}, {} rows stored, offsets {:?} \
         of {:?}",
        db.sales_ids().len(),
        db.stored_offsets(topic),
        written_partitions(topic),
    )
}

/// End offsets of the partitions that received records (keys may leave some empty).
fn written_partitions(topic: &str) -> BTreeMap<i64, i64> {
    end_offsets(topic)
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect()
}

/// Wait for the producer, then until the group has stored all `n` events.
fn wait_for_everything(producer: Running, db: &TestDb, n: usize) {
    let out = producer.wait();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(
        wait_until(60, || db.count("sales_events") as usize >= n),
        "the group stored {} of {n} events",
        db.count("sales_events")
    );
}

#[test]
fn three_members_share_six_partitions_survive_a_death_and_welcome_a_newcomer() {
    let db = TestDb::pg();
    let topic = topic(6);
    let group = unique("g");
    let n = 40_000;
    let producer = produce(&topic, n).rate(2_000).seed(21).spawn();

    let a = Member::streamlab("a", &db, &topic, &group);
    let b = Member::streamlab("b", &db, &topic, &group);
    let c = Member::streamlab("c", &db, &topic, &group);
    let (first, who) = wait_for_settled(&[&a, &b, &c], 6, -1, Duration::from_secs(30));
    for (name, partitions) in &who {
        assert_eq!(
            partitions.len(),
            2,
            "range gives 6/3 each, {name} has {who:?}"
        );
    }
    // `check` shows the same: three live members, each partition held once.
    let report = streamlab("check")
        .db(&db)
        .topic(&topic)
        .group(&group)
        .json()
        .ok_json();
    let shown: BTreeSet<BTreeSet<i32>> = report["group"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ps = m["partitions"]
                .as_array()
                .expect("streamlab members report partitions");
            ps.iter().map(|p| p.as_i64().unwrap() as i32).collect()
        })
        .collect();
    assert_eq!(shown, who.values().cloned().collect(), "{report}");
    let described = streamlab("topic describe")
        .topic(&topic)
        .group(&group)
        .json()
        .ok_json();
    assert_eq!(described["group"]["members"].as_array().unwrap().len(), 3);
    // So does `watch`: every partition has an owner, three owners in all.
    let snapshot = streamlab("watch")
        .topic(&topic)
        .group(&group)
        .db(&db)
        .count(1)
        .ok_json();
    let owners: Vec<&str> = snapshot["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["owner"].as_str().expect("an owner"))
        .collect();
    assert_eq!(owners.len(), 6, "{snapshot}");
    assert_eq!(
        owners.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{snapshot}"
    );

    // b dies without a word: its partitions must move to a and c once its session expires.
    b.process.signal("KILL");
    let killed = Instant::now();
    let (second, who) = wait_for_settled(&[&a, &c], 6, first, SESSION * 4);
    let moved_after = killed.elapsed();
    eprintln!("b's partitions moved {moved_after:?} after SIGKILL ({who:?})");
    // The session timeout, then one heartbeat interval for a survivor to hear of it, then the
    // rejoin (9–10 s measured on two busy cores). The bound proves it is b's session expiring
    // that moves them, once, not a second session or a stuck rejoin; how fast is `just bench`'s.
    assert!(
        moved_after < SESSION * 2 + Duration::from_secs(3),
        "took {moved_after:?} (session timeout {SESSION:?})"
    );

    // A newcomer takes a share.
    let d = Member::streamlab("d", &db, &topic, &group);
    let (_, who) = wait_for_settled(&[&a, &c, &d], 6, second, Duration::from_secs(30));
    assert_eq!(who["d"].len(), 2, "{who:?}");

    wait_for_everything(producer, &db, n);
    for member in [a, c, d] {
        member.stop();
    }
    assert_eq!(db.sales_ids(), seeded_ids(21, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

#[test]
fn a_paused_member_that_lost_its_partitions_never_writes_them_again() {
    // PostgreSQL: a SQLite writer paused inside its transaction would hold the whole database
    // locked (the others fail after --timeout, by design). In PostgreSQL it holds only its own
    // partitions' offset rows, and whoever waits on them is fenced once it resumes.
    let db = TestDb::pg();
    let topic = topic(4);
    let group = unique("g");
    let n = 30_000;
    streamlab("migrate").db(&db).ok();
    let producer = produce(&topic, n).rate(2_000).seed(22).spawn();

    let a = Member::streamlab("a", &db, &topic, &group);
    let b = Member::streamlab("b", &db, &topic, &group);
    let (first, held) = wait_for_settled(&[&a, &b], 4, -1, Duration::from_secs(30));

    // SIGSTOP: b keeps its connections and whatever it fetched but cannot heartbeat. After the
    // session timeout, a owns everything and writes on.
    b.process.signal("STOP");
    let (_, who) = wait_for_settled(&[&a], 4, first, SESSION * 3);
    assert_eq!(who["a"].len(), 4);
    // b resumes only once a has written b's partitions — or waits on b's locks, if b stopped
    // inside a transaction: either way b's stale batches then meet the fence.
    let of_b = |stored: BTreeMap<i64, i64>| -> BTreeMap<i64, i64> {
        let of_b = |p: &i64| held["b"].contains(&(*p as i32));
        stored.into_iter().filter(|(p, _)| of_b(p)).collect()
    };
    let at_stop = of_b(db.stored_offsets(&topic));
    assert!(
        wait_until(30, || {
            let now = of_b(db.stored_offsets(&topic));
            let written = held["b"].iter().all(|p| {
                let p = i64::from(*p);
                now.get(&p).copied().unwrap_or(0) > at_stop.get(&p).copied().unwrap_or(0)
            });
            written
                || db.scalar(
                    "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND database = \
                     (SELECT oid FROM pg_database WHERE datname = current_database())",
                ) > 0
        }),
        "a neither wrote nor waits on b's partitions {:?}:\n{}",
        held["b"],
        a.output()
    );
    b.process.signal("CONT");

    wait_for_everything(producer, &db, n);
    let outputs = [a.stop(), b.stop()];
    // Every event was written by exactly one member: had b's stale batches landed on top of
    // a's, one of them would have counted them as duplicates.
    let (mut inserted, mut duplicates) = (0, 0);
    for out in &outputs {
        let summary = out.json();
        inserted += counted(&summary, "inserted");
        duplicates += counted(&summary, "duplicates");
    }
    assert_eq!((inserted, duplicates), (n as u64, 0), "{outputs:#?}");
    assert_eq!(db.sales_ids(), seeded_ids(22, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

#[test]
fn a_librdkafka_consumer_shares_the_group_with_streamlab_members() {
    let db = TestDb::sqlite();
    let topic = topic(6);
    let group = unique("g");
    let n = 6_000;
    streamlab("migrate").db(&db).ok();
    let producer = produce(&topic, n).seed(23).spawn();

    let a = Member::streamlab("a", &db, &topic, &group);
    let (first, _) = wait_for_settled(&[&a], 6, -1, Duration::from_secs(30));
    let rd = Member::librdkafka("librdkafka", &topic, &group, "range");
    let b = Member::streamlab("b", &db, &topic, &group);
    let (_, who) = wait_for_settled(&[&a, &b, &rd], 6, first, Duration::from_secs(45));
    assert!(!who["librdkafka"].is_empty(), "{who:?}");

    // librdkafka stored nothing; once it leaves, its partitions are consumed by the others.
    rd.stop();
    wait_for_everything(producer, &db, n);
    let out = [a.stop(), b.stop()];
    assert_eq!(db.sales_ids(), seeded_ids(23, n), "{out:#?}");
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
    let _ = std::io::stdout().flush();
}

#[test]
fn members_started_together_on_a_new_sqlite_file_share_a_backlog_and_stop_at_its_end() {
    // No `migrate` first: four processes race to create the file, switch it to WAL and apply
    // the migrations; every one must start, and together they store the backlog once.
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = unique("g");
    let n = 9_000;
    produce(&topic, n).seed(24).ok();
    let member = streamlab("consume")
        .topic(&topic)
        .db(&db)
        .group(&group)
        .stop_at_end()
        .json();
    let members: Vec<Running> = (0..4).map(|_| member.spawn()).collect();
    let (mut inserted_by, mut outputs) = (Vec::new(), Vec::new());
    for member in members {
        let out = member.wait().success();
        inserted_by.push(counted(&out.json(), "inserted"));
        outputs.push((out.stdout, out.stderr));
    }
    assert_eq!(
        inserted_by.iter().sum::<u64>(),
        n as u64,
        "{}\n{outputs:#?}",
        counted_apart(&inserted_by, &db, &topic)
    );
    assert_eq!(db.sales_ids(), seeded_ids(24, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

/// A member's assignments as its JSON summary lists them: generation → partitions.
fn generations(summary: &serde_json::Value) -> BTreeMap<i64, Vec<i64>> {
    let assignments = summary["assignments"].as_array();
    let each = assignments.into_iter().flatten().map(|a| {
        let partitions = a["partitions"].as_array().unwrap();
        let partitions = partitions.iter().map(|p| p.as_i64().unwrap());
        (a["generation"].as_i64().unwrap(), partitions.collect())
    });
    each.collect()
}

#[test]
fn a_stop_at_end_member_waits_for_a_share_still_unread_and_takes_it_when_its_member_leaves() {
    // Members started together leave one by one with `--stop-at-end`; one that finished its own
    // share must not leave while another share is unread, or a partition whose member already
    // left would be read by nobody. librdkafka stands for such a member: it holds a share and
    // stores nothing, and it leaves when told.
    let db = TestDb::sqlite();
    let topic = topic(2);
    let group = unique("g");
    let n = 2_000;
    streamlab("migrate").db(&db).ok();
    produce(&topic, n).seed(31).ok();
    let ends = written_partitions(&topic);
    assert_eq!(ends.len(), 2, "both partitions hold records: {ends:?}");
    let rd = Member::librdkafka("librdkafka", &topic, &group, "range");
    assert!(
        wait_until(30, || rd.current().is_some_and(|(_, ps)| ps.len() == 2)),
        "librdkafka never held the topic:\n{}",
        rd.output()
    );
    let mut a = streamlab("consume")
        .topic(&topic)
        .db(&db)
        .group(&group)
        .stop_at_end()
        .timeout("60s")
        .json()
        .spawn();
    // The fault: a's share is stored to its end while librdkafka's is unread — and a stays.
    // The one partition stored, when it is stored to its end.
    let one_share_done = || match db.stored_offsets(&topic).into_iter().collect::<Vec<_>>()[..] {
        [(p, at)] if ends.get(&p) == Some(&at) => Some(p),
        _ => None,
    };
    assert!(
        wait_until(45, || one_share_done().is_some()),
        "a never finished a share: {:?}\n{}",
        db.stored_offsets(&topic),
        rd.output()
    );
    let mine = one_share_done().expect("a share done");
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.is_running(), "a left with partition {} unread", 1 - mine);
    assert_eq!(
        db.stored_offsets(&topic).len(),
        1,
        "nobody read librdkafka's share"
    );
    // librdkafka leaves: a is given its share, reads it, and only then exits.
    rd.stop();
    let out = a.wait().success();
    assert_eq!(db.sales_ids(), seeded_ids(31, n));
    assert_eq!(db.stored_offsets(&topic), ends);
    let last = generations(&out.json())
        .into_values()
        .last()
        .unwrap_or_default();
    assert_eq!(last, vec![0, 1], "{}", out.stderr);
}

#[test]
fn three_consumers_of_one_group_started_together_share_the_partitions() {
    // What `kafka-console-consumer --group` users expect: the same command three times, and the
    // three processes split the topic between them instead of fencing each other off.
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = unique("g");
    let n = 9_000;
    streamlab("migrate").db(&db).ok();
    produce(&topic, n).seed(27).ok();
    // Throttled: alone, one member would need 9 s for the backlog, so the others join (tansu
    // holds a follower's JoinGroup 3 s) long before the first could finish without them.
    let member = streamlab("consume")
        .group(&group)
        .topic(&topic)
        .db(&db)
        .stop_at_end()
        .throttle(1000)
        .json();
    let members: Vec<Running> = (0..3).map(|_| member.spawn()).collect();
    let (mut inserted_by, mut assignments, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
    for member in members {
        let out = member.wait().success();
        assert!(
            !out.stderr.contains("another consumer"),
            "no member ran into the fence: {}",
            out.stderr
        );
        inserted_by.push(counted(&out.json(), "inserted"));
        assignments.push(generations(&out.json()));
        outputs.push(out.stderr);
    }
    // Shared: every member was given partitions, and more than one stored events. (Which
    // generation each one synced in varies: tansu answers followers late, and a member whose
    // partitions reach their end leaves, which starts another generation.)
    assert!(
        assignments
            .iter()
            .all(|a| a.values().any(|ps| !ps.is_empty())),
        "{assignments:?}\n{outputs:#?}"
    );
    assert!(
        inserted_by.iter().filter(|&&i| i > 0).count() >= 2,
        "{inserted_by:?} {assignments:?}\n{outputs:#?}"
    );
    assert_eq!(
        inserted_by.iter().sum::<u64>(),
        n as u64,
        "{}; {assignments:?}\n{outputs:#?}",
        counted_apart(&inserted_by, &db, &topic)
    );
    assert_eq!(db.sales_ids(), seeded_ids(27, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

#[test]
fn a_group_that_speaks_another_assignor_is_a_clear_error() {
    let topic = topic(2);
    let group = unique("g");
    let rd = Member::librdkafka("librdkafka", &topic, &group, "roundrobin");
    assert!(
        wait_until(30, || rd.current().is_some_and(|(_, ps)| ps.len() == 2)),
        "{}",
        rd.output()
    );
    let db = TestDb::sqlite();
    streamlab("consume")
        .topic(&topic)
        .db(&db)
        .group(&group)
        .fails(
            1,
            &[&group, "roundrobin", "use another --group"],
            &["panicked"],
        );
    rd.stop();
}

#[test]
fn a_member_left_without_partitions_stays_in_the_group_and_takes_over_from_a_dead_one() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    let group = unique("g");
    let n = 6_000;
    let producer = produce(&topic, n).rate(1_000).seed(25).spawn();

    let members = [
        Member::streamlab("a", &db, &topic, &group),
        Member::streamlab("b", &db, &topic, &group),
        Member::streamlab("c", &db, &topic, &group),
    ];
    let all: Vec<&Member> = members.iter().collect();
    let (first, who) = wait_for_settled(&all, 2, -1, Duration::from_secs(30));
    let idle = *who
        .iter()
        .find(|(_, ps)| ps.is_empty())
        .map(|(name, _)| name)
        .expect("three members, two partitions: one idles");
    // Idle is not finished: it stays a member (a few heartbeat intervals later, still running).
    std::thread::sleep(SESSION / 2);
    let mut members = Vec::from(members);
    for m in &mut members {
        assert!(
            m.process.is_running(),
            "{} exited while the group still runs:\n{}",
            m.name,
            m.output()
        );
    }

    // A member holding a partition dies; the idle one must take its share.
    let victim = members
        .iter()
        .position(|m| m.name != idle)
        .expect("a member with partitions");
    let dead = members.remove(victim);
    dead.process.signal("KILL");
    let survivors: Vec<&Member> = members.iter().collect();
    let (_, who) = wait_for_settled(&survivors, 2, first, SESSION * 3);
    assert_eq!(who[idle].len(), 1, "{idle} took over: {who:?}");

    wait_for_everything(producer, &db, n);
    for member in members {
        member.stop();
    }
    assert_eq!(db.sales_ids(), seeded_ids(25, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

/// A group member of our own making, speaking the protocol correctly except for the
/// subscription it announces: `metadata` goes to the leader as is.
struct HandCraftedMember {
    stop: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<Mutex<CraftedLog>>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct CraftedLog {
    /// Generations in which the coordinator made this member the leader.
    led: Vec<i32>,
    /// Every assignment SyncGroup gave it, as streamlab decodes them.
    assignments: Vec<BTreeMap<String, Vec<i32>>>,
    errors: Vec<String>,
}

impl HandCraftedMember {
    fn join(group: &str, metadata: Vec<u8>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = Arc::new(Mutex::new(CraftedLog::default()));
        let (group, flag, shared) = (group.to_string(), Arc::clone(&stop), Arc::clone(&log));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(crafted_member(&group, metadata.into(), &flag, &shared));
        });
        Self { stop, log, thread }
    }

    /// Synced at least once: a member of the group, in the plan of a generation's leader.
    fn was_assigned(&self) -> bool {
        !self.log.lock().unwrap().assignments.is_empty()
    }

    fn leave(self) -> CraftedLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the crafted member's thread");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A connection to `group`'s coordinator, found with FindCoordinator at the broker.
async fn coordinator_of(group: &str) -> streamlab::kafka::wire::WireConnection {
    use kafka_protocol::messages::FindCoordinatorRequest;
    use kafka_protocol::protocol::StrBytes;
    use streamlab::kafka::wire::WireConnection;

    let s = |t: &str| StrBytes::from_string(t.to_string());
    let opts = streamlab::kafka::Config::default();
    let mut bootstrap = WireConnection::connect(&brokers(), &opts).await.unwrap();
    let version = bootstrap
        .version_for::<FindCoordinatorRequest>(i16::MAX)
        .unwrap();
    let mut find = FindCoordinatorRequest::default().with_key_type(0);
    if version >= 4 {
        find.coordinator_keys = vec![s(group)];
    } else {
        find.key = s(group);
    }
    let found = bootstrap.call(find).await.unwrap();
    let (host, port) = match found.coordinators.first() {
        Some(c) if version >= 4 => (c.host.to_string(), c.port),
        _ => (found.host.to_string(), found.port),
    };
    WireConnection::connect(&format!("{host}:{port}"), &opts)
        .await
        .unwrap()
}

/// JoinGroup for `group` as `member_id` (empty: a new member), offering the range protocol.
fn join_request(
    group: &str,
    member_id: &str,
    metadata: bytes::Bytes,
) -> kafka_protocol::messages::JoinGroupRequest {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{GroupId, JoinGroupRequest};
    use kafka_protocol::protocol::StrBytes;
    let s = |t: &str| StrBytes::from_string(t.to_string());
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(6_000)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(metadata)])
}

async fn crafted_member(
    group: &str,
    metadata: bytes::Bytes,
    stop: &std::sync::atomic::AtomicBool,
    log: &Mutex<CraftedLog>,
) {
    use kafka_protocol::error::ResponseError;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::{
        GroupId, HeartbeatRequest, LeaveGroupRequest, SyncGroupRequest,
    };
    use kafka_protocol::protocol::StrBytes;
    use std::sync::atomic::Ordering;
    use streamlab::kafka::assign::decode_assignment;

    let s = |t: &str| StrBytes::from_string(t.to_string());
    let mut conn = coordinator_of(group).await;

    let mut member_id = String::new();
    'join: while !stop.load(Ordering::SeqCst) {
        let join = join_request(group, &member_id, metadata.clone());
        let joined = match conn.call_within(join, 9, Duration::from_secs(45)).await {
            Ok(joined) => joined,
            Err(e) => {
                log.lock().unwrap().errors.push(format!("JoinGroup: {e:#}"));
                return;
            }
        };
        match ResponseError::try_from_code(joined.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                member_id = joined.member_id.to_string();
                continue;
            }
            Some(ResponseError::UnknownMemberId) => {
                member_id.clear();
                continue;
            }
            Some(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        }
        member_id = joined.member_id.to_string();
        let generation = joined.generation_id;
        if joined.leader.as_str() == member_id {
            log.lock().unwrap().led.push(generation);
        }
        let heartbeat = || {
            HeartbeatRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id(generation)
                .with_member_id(s(&member_id))
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(&member_id))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")));
        let synced = match conn.call_within(sync, 5, Duration::from_secs(45)).await {
            Ok(synced) => synced,
            Err(e) => {
                log.lock().unwrap().errors.push(format!("SyncGroup: {e:#}"));
                return;
            }
        };
        if synced.error_code != 0 {
            // Not synced yet (tansu answers followers so until the leader has): stay alive, retry.
            let _ = conn.call_capped(heartbeat(), 4).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        match decode_assignment(&synced.assignment) {
            Ok(assignment) => log.lock().unwrap().assignments.push(assignment),
            Err(e) => log
                .lock()
                .unwrap()
                .errors
                .push(format!("assignment: {e:#}")),
        }
        // Heartbeat until stopped or the group rebalances.
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match conn.call_capped(heartbeat(), 4).await {
                Ok(beat) if beat.error_code == 0 => {}
                Ok(_) => continue 'join,
                Err(e) => {
                    log.lock().unwrap().errors.push(format!("Heartbeat: {e:#}"));
                    return;
                }
            }
        }
    }
    let leave = if conn.version_for::<LeaveGroupRequest>(5).unwrap() >= 3 {
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_members(vec![MemberIdentity::default().with_member_id(s(&member_id))])
    } else {
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_member_id(s(&member_id))
    };
    let _ = conn.call_capped(leave, 5).await;
}

#[test]
fn members_announcing_impossible_or_absent_subscriptions_get_nothing_and_the_group_goes_on() {
    let db = TestDb::sqlite();
    let topic = topic(4);
    let group = unique("g");
    let n = 8_000;
    streamlab("migrate").db(&db).ok();
    let producer = produce(&topic, n).rate(1_000).seed(26).spawn();

    // streamlab joins first and leads (tansu keeps the leader of a formed group when others
    // join, as Kafka does).
    let a = Member::streamlab("a", &db, &topic, &group);
    let (first, _) = wait_for_settled(&[&a], 4, -1, Duration::from_secs(30));
    // A subscription v0 announcing 0x7fffffff topics in 12 bytes. Decoded as it stands,
    // kafka-protocol would reserve 64 GiB for the topic list and abort the leader.
    let mut impossible = vec![0, 0];
    impossible.extend_from_slice(&i32::MAX.to_be_bytes());
    impossible.extend_from_slice(&[0; 12]);
    let hostile = HandCraftedMember::join(&group, impossible);
    // A well-formed one naming hundreds of topics that do not exist, or cannot: the leader
    // asks about them in one request and gives this member nothing either.
    let mut absent: Vec<String> = (0..500).map(|i| format!("{group}-absent-{i}")).collect();
    absent.extend(["no such topic".into(), String::new(), "x".repeat(300)]);
    let absent: Vec<&str> = absent.iter().map(String::as_str).collect();
    let odd = HandCraftedMember::join(&group, subscription_bytes(&absent));
    assert!(
        wait_until(30, || hostile.was_assigned() && odd.was_assigned()),
        "the crafted members never completed a round"
    );
    let (second, who) = wait_for_settled(&[&a], 4, first, Duration::from_secs(30));
    assert_eq!(who["a"].len(), 4);
    // A newcomer still gets its share while the crafted members stay in the group.
    let b = Member::streamlab("b", &db, &topic, &group);
    let (_, who) = wait_for_settled(&[&a, &b], 4, second, Duration::from_secs(30));
    assert_eq!((who["a"].len(), who["b"].len()), (2, 2), "{who:?}");

    for crafted in [hostile, odd] {
        let log = crafted.leave();
        assert!(log.led.is_empty(), "a crafted member led: {log:?}");
        assert!(log.errors.is_empty(), "{log:?}");
        assert!(
            log.assignments.iter().all(BTreeMap::is_empty),
            "the leader gave a crafted member partitions: {log:?}"
        );
    }
    wait_for_everything(producer, &db, n);
    let outputs = [a.stop(), b.stop()];
    // Said once per process, by a member that computed an assignment: `a` as a rule, `b` too
    // when tansu made it the leader of a generation (it may, when `a` is slow to rejoin).
    let warnings: Vec<usize> = outputs
        .iter()
        .map(|out| {
            out.stderr
                .matches("sent a subscription announcing 2147483647 topics in 12 bytes")
                .count()
        })
        .collect();
    let led: Vec<bool> = outputs
        .iter()
        .map(|out| out.stderr.contains("(this member leads the group)"))
        .collect();
    assert!(
        warnings[0] == 1
            && warnings.iter().all(|&w| w <= 1)
            && warnings.iter().zip(&led).all(|(&w, &led)| w == 0 || led),
        "warned once per process, by leaders only: {warnings:?} (led: {led:?}) {outputs:#?}"
    );
    assert_eq!(db.sales_ids(), seeded_ids(26, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

/// A consumer-protocol subscription (v0) to `topics`, as any client would encode it.
fn subscription_bytes(topics: &[&str]) -> Vec<u8> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let subscription = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.to_string()))
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    bytes::BufMut::put_i16(&mut buf, 0);
    subscription.encode(&mut buf, 0).unwrap();
    buf.to_vec()
}

#[test]
fn group_list_and_describe_show_kafkas_view_and_the_database_beside_it() {
    for db in TestDb::both() {
        let topic = topic(2);
        let group = unique("g");
        produce(&topic, 100).seed(41).ok();
        consume_json(&brokers(), &topic, &db.url)
            .group(&group)
            .ok_json();
        let ends = end_offsets(&topic);

        let listed = streamlab("group list").json().ok_json();
        let mine: Vec<&serde_json::Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["group"] == group.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{listed}");
        assert_eq!(
            (&mine[0]["state"], &mine[0]["members"]),
            (&"Empty".into(), &0.into())
        );

        // 50 more: the lag, from Kafka alone.
        produce(&topic, 50).seed(42).ok();
        let now = end_offsets(&topic);
        let describe = || streamlab("group describe").group(&group).json();
        let described = describe().ok_json();
        assert_eq!(described["members"], serde_json::json!([]));
        assert!(described.get("database").is_none(), "{described}");
        let t = &described["topics"][0];
        assert_eq!(
            (&t["topic"], &t["total_lag"]),
            (&topic.as_str().into(), &50.into())
        );
        for p in t["partitions"].as_array().unwrap() {
            let id = p["partition"].as_i64().unwrap();
            assert_eq!(p["committed"], ends[&id]);
            assert_eq!(p["log_end"], now[&id]);
            assert_eq!(p["lag"], now[&id] - ends[&id]);
            assert!(p.get("database_offset").is_none(), "{p}");
        }

        // Beside the database: agreement, then a disagreement flagged.
        let beside = || describe().db(&db);
        assert_eq!(beside().ok_json()["disagreements"], 0);
        db.exec(&format!(
            "UPDATE streamlab_offsets SET next_offset = 1 WHERE topic = '{topic}' AND kafka_partition = 0"
        ));
        let flagged = beside().ok_json();
        assert_eq!(flagged["disagreements"], 1);
        let p0 = &flagged["topics"][0]["partitions"][0];
        assert_eq!(
            (&p0["committed"], &p0["database_offset"], &p0["agrees"]),
            (&ends[&0].into(), &1.into(), &false.into())
        );
        let table = streamlab("group describe").group(&group).db(&db).ok();
        assert!(
            table.contains("1 partition(s) where the database and Kafka disagree"),
            "{table}"
        );

        // A member: who it is and what it holds (from the database's record where the broker
        // does not report assignments).
        let member = streamlab("consume")
            .topic(&topic)
            .db(&db)
            .group(&group)
            .spawn();
        let mut seen = serde_json::Value::Null;
        let holds_both = wait_until(30, || {
            seen = beside().ok_json();
            seen["members"][0]["partitions"][&topic] == serde_json::json!([0, 1])
        });
        assert!(holds_both, "{seen}");
        assert_eq!(seen["members"].as_array().unwrap().len(), 1);
        assert_eq!(seen["state"], "Stable");
        let member_id = seen["members"][0]["member_id"].clone();
        for p in seen["topics"][0]["partitions"].as_array().unwrap() {
            assert_eq!(p["member"], member_id);
        }
        assert!(member.terminate().succeeded());
    }

    let nobody = unique("nobody");
    streamlab("group describe").group(&nobody).fails(
        1,
        &[&format!("consumer group '{nobody}' does not exist")],
        &[],
    );
    streamlab("group describe").fails(2, &["--group"], &[]);
    streamlab("group describe")
        .group("g")
        .args(["--format", "xml"])
        .fails(2, &["--format"], &[]);
    streamlab("group describe")
        .group("g")
        .url("mysql://x")
        .fails(2, &["not a database"], &[]);
    streamlab("group list")
        .args(["--format", "xml"])
        .fails(2, &["--format"], &[]);
}
