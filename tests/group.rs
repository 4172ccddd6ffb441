//! `consume --group`: consumers of one group are its members and share the topic's partitions
//! through Kafka's consumer-group protocol, hand them over when one joins, leaves or dies, and
//! together store every event exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Session timeout given to every member here: the shortest Apache Kafka accepts by default.
const SESSION: Duration = Duration::from_secs(6);

/// A group member running in the background, its output collected line by line.
struct Member {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// librdkafka's member leaves when its stdin closes.
    stdin: Option<ChildStdin>,
}

impl Member {
    fn streamlab(name: &'static str, db: &TestDb, topic: &str, group: &str) -> Self {
        let child = command(&[
            "consume",
            "--topic",
            topic,
            "--sink",
            db.sink,
            "-D",
            &db.url,
            "--group",
            group,
            "--session-timeout",
            "6s",
            "--batch-size",
            "500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamlab");
        Self::collect(name, child, None)
    }

    /// A librdkafka consumer in the same group (it takes part in the protocol, stores nothing).
    fn librdkafka(name: &'static str, topic: &str, group: &str, strategy: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/rdkafka_client.py");
        let mut child = Command::new(rdkafka_python())
            .args([script, "member", group, topic, strategy])
            .env("STREAMLAB_BROKERS", brokers())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the test Python");
        let stdin = child.stdin.take();
        Self::collect(name, child, stdin)
    }

    fn collect(name: &'static str, mut child: Child, stdin: Option<ChildStdin>) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name,
            child,
            lines,
            stdin,
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The latest assignment this member reported: (generation, partitions). librdkafka's
    /// callbacks carry no generation; its assignments count as generation -1.
    fn current(&self) -> Option<(i32, BTreeSet<i32>)> {
        let lines = self.lines.lock().unwrap();
        let mut current = None;
        for line in lines.iter() {
            if let Some(rest) = line.split_once(" generation ").map(|(_, r)| r) {
                let (generation, rest) = rest.split_once(": partitions [").unwrap_or(("", ""));
                let (list, _) = rest.split_once(']').unwrap_or(("", ""));
                if let Ok(generation) = generation.parse() {
                    current = Some((generation, parse_list(list)));
                }
            } else if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
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

    /// Stop the way an operator does (Ctrl-C / closing the program) and return its output.
    fn stop(mut self) -> String {
        match self.stdin.take() {
            Some(stdin) => drop(stdin),
            None => signal(&self.child, "TERM"),
        }
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100)); // let the readers drain the pipes
        let out = self.output();
        assert!(status.success(), "{} exited {status}:\n{out}", self.name);
        out
    }
}

fn parse_list(list: &str) -> BTreeSet<i32> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
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

/// End offsets of the partitions that received records (keys may leave some empty).
fn written_partitions(topic: &str) -> BTreeMap<i64, i64> {
    end_offsets(topic)
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect()
}

fn produce_seeded(topic: &str, count: usize, rate: u32, seed: u64) -> Child {
    spawn(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--seed",
        &seed.to_string(),
    ])
}

/// The number before `word` in consume's summary ("consumed … : N inserted, N duplicates …").
fn summary_count(output: &str, word: &str) -> u64 {
    let summary = output
        .lines()
        .find(|l| l.starts_with("consumed "))
        .unwrap_or_else(|| panic!("no summary in {output}"));
    let head = summary
        .split(&format!(" {word}"))
        .next()
        .expect("split yields one part");
    let number = head.rsplit(' ').next().expect("rsplit yields one part");
    number
        .parse()
        .unwrap_or_else(|_| panic!("no count before '{word}' in {summary:?}"))
}

/// Wait for the producer, then until the group has stored all `n` events.
fn wait_for_everything(producer: Child, db: &TestDb, n: usize) {
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(60, || db.scalar("SELECT COUNT(*) FROM sales_events")
            as usize
            >= n),
        "the group stored {} of {n} events",
        db.scalar("SELECT COUNT(*) FROM sales_events")
    );
}

#[test]
fn three_members_share_six_partitions_survive_a_death_and_welcome_a_newcomer() {
    let db = TestDb::pg();
    let topic = topic(6);
    let group = unique("g");
    let n = 40_000;
    let producer = produce_seeded(&topic, n, 2_000, 21);

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
    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "check", "--sink", db.sink, "-D", &db.url, "--topic", &topic, "--group", &group,
        "--format", "json",
    ]))
    .unwrap();
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
    let described: serde_json::Value = serde_json::from_str(&ok(&[
        "topic", "describe", "--topic", &topic, "--group", &group, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(described["group"]["members"].as_array().unwrap().len(), 3);
    // So does `watch`: every partition has an owner, three owners in all.
    let snapshot: serde_json::Value = serde_json::from_str(&ok(&[
        "watch", "--topic", &topic, "--group", &group, "--sink", db.sink, "-D", &db.url, "--count",
        "1",
    ]))
    .unwrap();
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
    signal(&b.child, "KILL");
    let killed = Instant::now();
    let (second, who) = wait_for_settled(&[&a, &c], 6, first, SESSION * 3);
    let moved_after = killed.elapsed();
    eprintln!("b's partitions moved {moved_after:?} after SIGKILL ({who:?})");
    // The session timeout, then one heartbeat interval for a survivor to hear of it, then
    // the rejoin itself.
    assert!(
        moved_after < SESSION + Duration::from_secs(5),
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
    ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
    let producer = produce_seeded(&topic, n, 2_000, 22);

    let a = Member::streamlab("a", &db, &topic, &group);
    let b = Member::streamlab("b", &db, &topic, &group);
    let (first, _) = wait_for_settled(&[&a, &b], 4, -1, Duration::from_secs(30));

    // SIGSTOP: b keeps its connections and whatever it fetched but cannot heartbeat. After the
    // session timeout, a owns everything and writes on.
    signal(&b.child, "STOP");
    let (_, who) = wait_for_settled(&[&a], 4, first, SESSION * 3);
    assert_eq!(who["a"].len(), 4);
    std::thread::sleep(Duration::from_secs(2));
    signal(&b.child, "CONT");

    wait_for_everything(producer, &db, n);
    let outputs = [a.stop(), b.stop()];
    // Every event was written by exactly one member: had b's stale batches landed on top of
    // a's, one of them would have counted them as duplicates.
    let (mut inserted, mut duplicates) = (0, 0);
    for out in &outputs {
        inserted += summary_count(out, "inserted");
        duplicates += summary_count(out, "duplicates");
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
    ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
    let producer = produce_seeded(&topic, n, 0, 23);

    let a = Member::streamlab("a", &db, &topic, &group);
    let (first, _) = wait_for_settled(&[&a], 6, -1, Duration::from_secs(30));
    let mut rd = Member::librdkafka("librdkafka", &topic, &group, "range");
    let b = Member::streamlab("b", &db, &topic, &group);
    let (_, who) = wait_for_settled(&[&a, &b, &rd], 6, first, Duration::from_secs(45));
    assert!(!who["librdkafka"].is_empty(), "{who:?}");

    // librdkafka stored nothing; once it leaves, its partitions are consumed by the others.
    drop(rd.stdin.take());
    assert!(rd.child.wait().unwrap().success(), "{}", rd.output());
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
    ok(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        &n.to_string(),
        "--rate",
        "0",
        "--seed",
        "24",
    ]);
    let args = [
        "consume",
        "--topic",
        &topic,
        "--sink",
        db.sink,
        "-D",
        &db.url,
        "--group",
        &group,
        "--stop-at-end",
    ];
    let members: Vec<Child> = (0..4).map(|_| spawn(&args)).collect();
    let mut inserted = 0;
    for member in members {
        let out = member.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        inserted += summary_count(&stdout, "inserted");
    }
    assert_eq!(
        inserted, n as u64,
        "each event inserted by exactly one member"
    );
    assert_eq!(db.sales_ids(), seeded_ids(24, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

/// Each member's assignments as it logged them: generation → partitions.
fn generations(stderr: &str) -> BTreeMap<i32, BTreeSet<i32>> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(" generation ")?.1;
            let (generation, rest) = rest.split_once(": partitions [")?;
            let (list, _) = rest.split_once(']')?;
            Some((generation.parse().ok()?, parse_list(list)))
        })
        .collect()
}

#[test]
fn three_consumers_of_one_group_started_together_share_the_partitions() {
    // What `kafka-console-consumer --group` users expect: the same command three times, and the
    // three processes split the topic between them instead of fencing each other off.
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = unique("g");
    let n = 9_000;
    ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
    ok(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        &n.to_string(),
        "--rate",
        "0",
        "--seed",
        "27",
    ]);
    // Throttled: alone, one member would need 9 s for the backlog, so the others join (tansu
    // holds a follower's JoinGroup 3 s) long before the first could finish without them.
    let args = [
        "consume",
        "--group",
        &group,
        "--topic",
        &topic,
        "--sink",
        db.sink,
        "-D",
        &db.url,
        "--stop-at-end",
        "--throttle",
        "1000",
    ];
    let members: Vec<Child> = (0..3).map(|_| spawn(&args)).collect();
    let (mut inserted_by, mut assignments, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
    for member in members {
        let out = member.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            !stderr.contains("another consumer"),
            "no member ran into the fence: {stderr}"
        );
        inserted_by.push(summary_count(&stdout, "inserted"));
        assignments.push(generations(&stderr));
        outputs.push(stderr);
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
        "each event inserted by exactly one member"
    );
    assert_eq!(db.sales_ids(), seeded_ids(27, n));
    assert_eq!(db.stored_offsets(&topic), written_partitions(&topic));
}

#[test]
fn a_group_that_speaks_another_assignor_is_a_clear_error() {
    let topic = topic(2);
    let group = unique("g");
    let mut rd = Member::librdkafka("librdkafka", &topic, &group, "roundrobin");
    assert!(
        wait_until(30, || rd.current().is_some_and(|(_, ps)| ps.len() == 2)),
        "{}",
        rd.output()
    );
    let db = TestDb::sqlite();
    fails(
        &[
            "consume", "--topic", &topic, "--sink", db.sink, "-D", &db.url, "--group", &group,
        ],
        1,
        &[&group, "roundrobin", "use another --group"],
        &["panicked"],
    );
    drop(rd.stdin.take());
    assert!(rd.child.wait().unwrap().success(), "{}", rd.output());
}

#[test]
fn a_member_left_without_partitions_stays_in_the_group_and_takes_over_from_a_dead_one() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    let group = unique("g");
    let n = 6_000;
    let producer = produce_seeded(&topic, n, 1_000, 25);

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
            m.child.try_wait().unwrap().is_none(),
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
    signal(&dead.child, "KILL");
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

async fn crafted_member(
    group: &str,
    metadata: bytes::Bytes,
    stop: &std::sync::atomic::AtomicBool,
    log: &Mutex<CraftedLog>,
) {
    use kafka_protocol::error::ResponseError;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::{
        FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
        SyncGroupRequest,
    };
    use kafka_protocol::protocol::StrBytes;
    use std::sync::atomic::Ordering;
    use streamlab::kafka::group::decode_assignment;
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
    let mut conn = WireConnection::connect(&format!("{host}:{port}"), &opts)
        .await
        .unwrap();

    let mut member_id = String::new();
    'join: while !stop.load(Ordering::SeqCst) {
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(6_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(s(&member_id))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(metadata.clone())]);
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
    ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
    let producer = produce_seeded(&topic, n, 1_000, 26);

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
    let warned: usize = outputs
        .iter()
        .map(|out| {
            out.matches("sent a subscription announcing 2147483647 topics in 12 bytes")
                .count()
        })
        .sum();
    assert_eq!(warned, 1, "warned once, by the leader: {outputs:#?}");
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
