//! The builder every test runs streamlab through: it reads like the command line,
//!
//! ```ignore
//! streamlab("consume").topic(&topic).db(&db).stop_at_end().json().ok_json()
//! ```
//!
//! so the options the commands share (`-b`, `--timeout`, `--topic`, `--group`, `--sink`/`-D`,
//! `--format json`…) are spelled once, here. It runs to completion ([`Cmd::ok`],
//! [`Cmd::ok_json`], [`Cmd::fails`], [`Cmd::run`]) or in the background ([`Cmd::spawn`], a
//! [`Running`] process whose output is collected line by line).
//!
//! Numbers and sets a test reasons with come from `--format json` (or `watch`'s JSON
//! snapshots), never from the sentences printed for people; what is asserted of those sentences
//! is their wording.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{brokers, TestDb};

/// `streamlab SUBCOMMAND`: `streamlab("topic create")` (its words split on whitespace);
/// `streamlab("")` for options before the subcommand (`streamlab("").arg("-vv").args(…)`).
pub fn streamlab(subcommand: &str) -> Cmd {
    Cmd {
        args: subcommand.split_whitespace().map(String::from).collect(),
        env: Vec::new(),
    }
}

/// A streamlab command line, with the environment it runs in: STREAMLAB_BROKERS set to the tests'
/// broker, DATABASE_URL unset, RUST_LOG=streamlab=info (unless changed with [`Cmd::env`]).
#[derive(Clone, Debug)]
pub struct Cmd {
    args: Vec<String>,
    /// Set (Some) or removed (None), in order, after the defaults.
    env: Vec<(String, Option<String>)>,
}

impl Cmd {
    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_string());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// `FLAG VALUE`, replacing the value of an earlier `FLAG` (so `produce(&t, 10).rate(500)`
    /// overrides the helper's `--rate 0`).
    fn opt(mut self, flag: &str, value: impl ToString) -> Self {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => {
                self.args[at + 1] = value.to_string();
                self
            }
            _ => self.arg(flag).arg(value.to_string()),
        }
    }

    /// `FLAG VALUE`, once more (for options given repeatedly, like `--config`).
    fn repeat(self, flag: &str, value: &str) -> Self {
        self.arg(flag).arg(value)
    }

    // --- Global options ---------------------------------------------------------------------

    /// `-b BROKERS` (else STREAMLAB_BROKERS: the tests' broker).
    pub fn brokers(self, brokers: &str) -> Self {
        self.opt("-b", brokers)
    }

    /// `--timeout DURATION`.
    pub fn timeout(self, timeout: &str) -> Self {
        self.opt("--timeout", timeout)
    }

    /// `-q`.
    pub fn quiet(self) -> Self {
        self.arg("-q")
    }

    /// `--command-config FILE`: Kafka's security settings from a properties file.
    pub fn command_config(self, path: &std::path::Path) -> Self {
        self.opt("--command-config", path.display())
    }

    /// `-X KEY=VALUE`, once more (a Kafka client setting, as kcat takes it).
    pub fn setting(self, setting: &str) -> Self {
        self.repeat("-X", setting)
    }

    // --- Options several commands share ------------------------------------------------------

    /// `--topic NAME`.
    pub fn topic(self, topic: &str) -> Self {
        self.opt("--topic", topic)
    }

    /// `--group NAME`.
    pub fn group(self, group: &str) -> Self {
        self.opt("--group", group)
    }

    /// `--sink SINK -D URL`: the test's database.
    pub fn db(self, db: &TestDb) -> Self {
        self.sink(db.sink).url(&db.url)
    }

    /// `--sink SINK` alone.
    pub fn sink(self, sink: &str) -> Self {
        self.opt("--sink", sink)
    }

    /// `-D URL` alone (the sink follows from the URL).
    pub fn url(self, url: &str) -> Self {
        self.opt("-D", url)
    }

    /// `--format json`.
    pub fn json(self) -> Self {
        self.opt("--format", "json")
    }

    /// `--kind sales|sensor`.
    pub fn kind(self, kind: &str) -> Self {
        self.opt("--kind", kind)
    }

    /// `--count N`: events to produce, or snapshots to print (`watch`).
    pub fn count(self, n: usize) -> Self {
        self.opt("--count", n)
    }

    /// `--metrics-addr HOST:PORT`.
    pub fn metrics_addr(self, addr: &str) -> Self {
        self.opt("--metrics-addr", addr)
    }

    // --- topic create ------------------------------------------------------------------------

    /// `--partitions N`.
    pub fn partitions(self, n: u32) -> Self {
        self.opt("--partitions", n)
    }

    /// `--config KEY=VALUE`.
    pub fn config(self, config: &str) -> Self {
        self.repeat("--config", config)
    }

    // --- produce -----------------------------------------------------------------------------

    /// `--rate N` events per second (0: as fast as the broker takes them).
    pub fn rate(self, rate: usize) -> Self {
        self.opt("--rate", rate)
    }

    /// `--seed N`.
    pub fn seed(self, seed: u64) -> Self {
        self.opt("--seed", seed)
    }

    // --- consume -----------------------------------------------------------------------------

    /// `--assign all`: every partition, alone (not a group member).
    pub fn assign_all(self) -> Self {
        self.opt("--assign", "all")
    }

    /// `--stop-at-end`.
    pub fn stop_at_end(self) -> Self {
        self.arg("--stop-at-end")
    }

    /// `--batch-size N`.
    pub fn batch_size(self, n: usize) -> Self {
        self.opt("--batch-size", n)
    }

    /// `--throttle EVENTS_PER_SEC`.
    pub fn throttle(self, per_sec: usize) -> Self {
        self.opt("--throttle", per_sec)
    }

    /// `--session-timeout DURATION`.
    pub fn session_timeout(self, timeout: &str) -> Self {
        self.opt("--session-timeout", timeout)
    }

    // --- check -------------------------------------------------------------------------------

    /// `--max-lag N`.
    pub fn max_lag(self, n: i64) -> Self {
        self.opt("--max-lag", n)
    }

    // --- watch -------------------------------------------------------------------------------

    /// `--interval DURATION`.
    pub fn interval(self, interval: &str) -> Self {
        self.opt("--interval", interval)
    }

    // --- offsets reset, dlq ------------------------------------------------------------------

    /// `--partition N` (once more: repeatable).
    pub fn partition(self, partition: i32) -> Self {
        self.repeat("--partition", &partition.to_string())
    }

    /// `--execute`: apply the plan `offsets reset` prints.
    pub fn execute(self) -> Self {
        self.arg("--execute")
    }

    /// `--id N`: one dead letter.
    pub fn id(self, id: i64) -> Self {
        self.opt("--id", id)
    }

    // --- The environment ---------------------------------------------------------------------

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.push((key.into(), None));
        self
    }

    // --- Running it --------------------------------------------------------------------------

    /// The arguments after `streamlab`.
    pub fn argv(&self) -> &[String] {
        &self.args
    }

    /// The process to run, stdio not yet chosen.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamlab"));
        cmd.args(&self.args)
            .env("STREAMLAB_BROKERS", brokers())
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "streamlab=info");
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Run to completion, whatever the outcome.
    pub fn run(&self) -> Run {
        let out = self.command().output().expect("run streamlab");
        Run {
            argv: self.args.clone(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self) -> String {
        self.run().success().stdout
    }

    /// Run, require success and read stdout as one JSON document (`--format json`, or a single
    /// `watch` snapshot).
    pub fn ok_json(&self) -> Value {
        self.run().success().json()
    }

    /// Run a command that must fail with exit `code`, its stderr naming everything in `says`
    /// and showing nothing in `never` (passwords, panics); returns stderr.
    pub fn fails(&self, code: i32, says: &[&str], never: &[&str]) -> String {
        self.run().fails(code, says, never)
    }

    /// Start it in the background, its output collected line by line.
    pub fn spawn(&self) -> Running {
        Running::start(self.command(), false)
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub argv: Vec<String>,
    /// None: ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// Require exit 0.
    pub fn success(self) -> Self {
        assert!(
            self.succeeded(),
            "streamlab {:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.argv,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Require exit `code`, stderr naming everything in `says` and nothing in `never`; returns
    /// stderr.
    pub fn fails(self, code: i32, says: &[&str], never: &[&str]) -> String {
        let stderr = self.stderr;
        assert_eq!(self.code, Some(code), "streamlab {:?}: {stderr}", self.argv);
        for text in says {
            assert!(stderr.contains(text), "stderr lacks {text:?}: {stderr}");
        }
        for secret in never {
            assert!(
                !stderr.contains(secret),
                "stderr shows {secret:?}: {stderr}"
            );
        }
        stderr
    }

    /// stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "streamlab {:?}: stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.argv, self.stdout, self.stderr
            )
        })
    }

    /// stdout as one JSON document per line (`watch`'s snapshots).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A process running in the background (streamlab, or a test's Python client), its stdout and
/// stderr collected line by line as they come.
pub struct Running {
    argv: Vec<String>,
    child: Child,
    output: Arc<Mutex<Output>>,
    readers: Vec<JoinHandle<()>>,
    /// Set when started with a stdin of its own: closing it is how the Python member leaves.
    pub stdin: Option<ChildStdin>,
}

#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Both, in the order they were read.
    both: Vec<String>,
}

impl Running {
    /// Spawn `cmd` with its output piped (and its stdin, if `stdin`).
    pub fn start(mut cmd: Command, stdin: bool) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        let argv = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd.spawn().expect("spawn the test process");
        let output = Arc::new(Mutex::new(Output::default()));
        let streams: [(bool, Box<dyn Read + Send>); 2] = [
            (true, Box::new(child.stdout.take().unwrap())),
            (false, Box::new(child.stderr.take().unwrap())),
        ];
        let readers = streams
            .into_iter()
            .map(|(is_stdout, stream)| {
                let output = Arc::clone(&output);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut line = Vec::new();
                    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        let mut output = output.lock().unwrap();
                        output.both.push(text.clone());
                        match is_stdout {
                            true => output.stdout.push(text),
                            false => output.stderr.push(text),
                        }
                        line.clear();
                    }
                })
            })
            .collect();
        let stdin = child.stdin.take();
        Self {
            argv,
            child,
            output,
            readers,
            stdin,
        }
    }

    /// `kill -SIG` it (TERM, KILL, STOP, CONT…).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Still running (not exited yet).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything it printed so far, stdout and stderr interleaved as read.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().both.join("\n")
    }

    /// Its stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.output.lock().unwrap().stdout.clone()
    }

    /// Its output lines so far (both streams, as read).
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().both.clone()
    }

    /// Its assignment in `group` as `group describe --format json` reports it from `db`'s
    /// record of the members: see [`Running::assignment_via`].
    pub fn assignment_in(
        &self,
        group: &str,
        topic: &str,
        db: &TestDb,
    ) -> Option<(i32, BTreeSet<i32>)> {
        self.assignment_via(&describe_members(group, topic, db), topic)
    }

    /// Its assignment as `describe` ([`describe_members`]) reports it: the generation and its
    /// partitions of `topic` in the row naming this process ("… pid N"). `None` until it
    /// recorded one.
    pub fn assignment_via(&self, describe: &Cmd, topic: &str) -> Option<(i32, BTreeSet<i32>)> {
        let described = describe.run();
        if !described.succeeded() {
            return None; // not a group yet
        }
        let me = format!(" pid {}", self.child.id());
        let members = described.json()["members"].as_array()?.clone();
        let member = members.iter().find(|m| {
            m["recorded_client"]
                .as_str()
                .is_some_and(|c| c.ends_with(&me))
        })?;
        let partitions = member["partitions"][topic].as_array()?;
        Some((
            member["generation"].as_i64()? as i32,
            partitions
                .iter()
                .map(|p| p.as_i64().unwrap() as i32)
                .collect(),
        ))
    }

    /// Wait for the exit, then for the last of its output.
    pub fn wait(mut self) -> Run {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().expect("an output reader");
        }
        let output = std::mem::take(&mut *self.output.lock().unwrap());
        let text = |lines: Vec<String>| lines.iter().map(|l| format!("{l}\n")).collect();
        Run {
            argv: std::mem::take(&mut self.argv),
            code: status.code(),
            stdout: text(output.stdout),
            stderr: text(output.stderr),
        }
    }

    /// SIGTERM (Ctrl-C) it and wait.
    pub fn terminate(self) -> Run {
        self.signal("TERM");
        self.wait()
    }

    /// SIGKILL it and wait.
    pub fn kill(self) -> Run {
        self.signal("KILL");
        self.wait()
    }

    /// Wait up to `within` for the exit; kill it (and fail, showing `what` and its output) if
    /// it is still running then.
    pub fn exit_within(mut self, within: Duration, what: &str) -> Run {
        let deadline = Instant::now() + within;
        while self.is_running() {
            if Instant::now() > deadline {
                let out = self.kill();
                panic!(
                    "{what} still running {within:?} later:\n{}{}",
                    out.stdout, out.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait()
    }
}

impl Drop for Running {
    /// A test that fails half-way leaves no process behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `group describe --format json` of `group`'s members of `topic`, with what `db` recorded of
/// them (generations and partitions, which tansu's DescribeGroups does not report).
pub fn describe_members(group: &str, topic: &str, db: &TestDb) -> Cmd {
    streamlab("group describe")
        .group(group)
        .topic(topic)
        .db(db)
        .json()
}
