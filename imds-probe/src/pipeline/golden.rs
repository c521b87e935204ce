//! The pipeline driven with record bytes, as the kernel side writes them, against a made-up
//! host and a clock that stands still; the JSON lines it writes are compared with golden files
//! in `testdata/pipeline/`, one per record kind. After a deliberate change of the output,
//! `IMDS_PROBE_BLESS=1 cargo test -p imds-probe --lib pipeline::golden` rewrites them: review
//! the diff before committing it.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io,
    path::PathBuf,
    rc::Rc,
};

use proptest::prelude::*;

use super::Pipeline;
use crate::{
    attribution::{
        Attributor, process_table::ProcessRecord, redact::Redactor, source::ProcessSource,
    },
    capture::{
        Backend,
        records::encode::{self, From},
    },
    outputs::{
        event::{Clock, Readings},
        ledger::{Ledger, LedgerData},
        loss::KernelLoss,
        sink::{Offer, Sink},
    },
};

/// The made-up host's monotonic clock at the start of each test: records are stamped shortly
/// after it.
const START_NS: u64 = 1_000_000_000_000;
/// 2027-01-15T08:00:00Z, the wall clock at `START_NS`.
const WALL_AT_START_NS: i128 = 1_800_000_000_000_000_000;
/// The boot-time clock runs 10 s ahead of the monotonic one (the host slept that long).
const SLEPT_NS: i128 = 10_000_000_000;

thread_local! {
    /// Nanoseconds the made-up host's clocks moved since `START_NS` (tests run on threads of
    /// their own, so each has its own clock).
    static ELAPSED_NS: Cell<i128> = const { Cell::new(0) };
    /// How far the wall clock was stepped (NTP) on top of that.
    static WALL_STEP_NS: Cell<i128> = const { Cell::new(0) };
}

fn readings() -> Readings {
    let elapsed = ELAPSED_NS.with(Cell::get);
    let monotonic = i128::from(START_NS) + elapsed;
    Readings {
        realtime: WALL_AT_START_NS + elapsed + WALL_STEP_NS.with(Cell::get),
        monotonic,
        boottime: monotonic + SLEPT_NS,
    }
}

/// The event lines, as the sink took them.
#[derive(Clone, Default)]
struct Lines(Rc<RefCell<Vec<String>>>);

impl Sink for Lines {
    fn offer(&mut self, line: Vec<u8>) -> Offer {
        let line = String::from_utf8(line).expect("events are UTF-8");
        self.0.borrow_mut().push(line);
        Offer::Queued
    }

    fn output_errors(&self) -> u64 {
        0
    }

    fn close(&mut self) {}
}

/// A host with init, cron and an older python process, two cgroups and two users.
struct MadeUpHost {
    processes: HashMap<u32, ProcessRecord>,
}

const CRON_CGROUP: u64 = 4_001;
const DOCKER_CGROUP: u64 = 4_002;
const CRON: u32 = 400;
const PYTHON: u32 = 500;

impl MadeUpHost {
    fn new() -> Self {
        let process = |pid, ppid, comm: &str, exe: &str, cmdline: &[&str], uid| ProcessRecord {
            pid,
            ppid,
            ns_pid: Some(pid),
            comm: comm.to_owned(),
            exe: Some(exe.to_owned()),
            cmdline: Some(cmdline.iter().map(|&a| a.to_owned()).collect()),
            uid,
            gid: uid,
            start_time_ns: Some(5_000_000_000),
        };
        let processes = [
            process(
                1,
                0,
                "systemd",
                "/usr/lib/systemd/systemd",
                &["/sbin/init"],
                0,
            ),
            process(
                CRON,
                1,
                "cron",
                "/usr/sbin/cron",
                &["/usr/sbin/cron", "-f"],
                0,
            ),
            process(
                PYTHON,
                CRON,
                "python3",
                "/usr/bin/python3.11",
                &["python3", "/opt/app/poll.py", "--password=hunter2"],
                1000,
            ),
        ];
        Self {
            processes: processes.into_iter().map(|p| (p.pid, p)).collect(),
        }
    }
}

impl ProcessSource for MadeUpHost {
    fn pids(&mut self) -> io::Result<Vec<u32>> {
        Ok(self.processes.keys().copied().collect())
    }

    fn process(&mut self, pid: u32, redactor: &Redactor) -> Option<ProcessRecord> {
        let mut process = self.processes.get(&pid).cloned()?;
        process.cmdline = process.cmdline.map(|args| redactor.redact(args));
        Some(process)
    }

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        match id {
            CRON_CGROUP => Some("/system.slice/cron.service".to_owned()),
            DOCKER_CGROUP => Some(format!("/system.slice/docker-{}.scope", "ab12".repeat(16))),
            _ => None,
        }
    }

    fn cgroup_id(&mut self, pid: u32) -> Option<u64> {
        self.processes.contains_key(&pid).then_some(CRON_CGROUP)
    }

    fn user_name(&mut self, uid: u32) -> Option<String> {
        match uid {
            0 => Some("root".to_owned()),
            1000 => Some("app".to_owned()),
            _ => None,
        }
    }
}

struct Run {
    pipeline: Pipeline,
    lines: Lines,
}

impl Run {
    fn new() -> Self {
        ELAPSED_NS.with(|elapsed| elapsed.set(0));
        WALL_STEP_NS.with(|step| step.set(0));
        let lines = Lines::default();
        let mut who = Attributor::new(Box::new(MadeUpHost::new()), Redactor::default());
        who.seed();
        let pipeline = Pipeline::new(
            Box::new(lines.clone()),
            who,
            Clock::reading(readings),
            Ledger::new(LedgerData::default(), 100),
            None,
        );
        Self { pipeline, lines }
    }

    fn feed(mut self, records: &[Vec<u8>]) -> Self {
        for record in records {
            self.pipeline.handle(record);
        }
        self
    }

    /// The lines written so far, connection ids numbered in order of appearance (the real
    /// ones are keyed by a random secret).
    fn lines(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let lines = self.lines.0.borrow();
        lines
            .iter()
            .map(|line| number_connections(line, &mut ids))
            .collect()
    }

    /// Compares with `testdata/pipeline/<name>.jsonl`, or writes it when blessing.
    fn check(&self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/pipeline")
            .join(format!("{name}.jsonl"));
        let mut got = self.lines().join("\n");
        got.push('\n');
        if std::env::var_os("IMDS_PROBE_BLESS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; IMDS_PROBE_BLESS=1 writes it from this run",
                path.display()
            )
        });
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(g, w)| g != w)
                .unwrap_or(got.lines().count().min(want.lines().count()));
            panic!(
                "{} differs from this run, first at line {}:\n got: {}\nwant: {}\n\
                 (IMDS_PROBE_BLESS=1 rewrites it if the change is meant)",
                path.display(),
                first + 1,
                got.lines().nth(first).unwrap_or("(nothing)"),
                want.lines().nth(first).unwrap_or("(nothing)"),
            );
        }
    }
}

fn number_connections(line: &str, ids: &mut Vec<u64>) -> String {
    const KEY: &str = "\"connection\":";
    let Some(at) = line.find(KEY).map(|at| at + KEY.len()) else {
        return line.to_owned();
    };
    let digits = line[at..].bytes().take_while(u8::is_ascii_digit).count();
    let id: u64 = line[at..at + digits].parse().expect("a connection id");
    let n = ids.iter().position(|&seen| seen == id).unwrap_or_else(|| {
        ids.push(id);
        ids.len() - 1
    }) + 1;
    format!("{}{n}{}", &line[..at], &line[at + digits..])
}

/// Milliseconds after the start, on the kernel's clock.
fn at(ms: u64) -> u64 {
    START_NS + ms * 1_000_000
}

/// sk_msg programs leave the comm to user space.
fn sk_msg_sender(pid: u32, uid: u32, cgroup_id: u64) -> From {
    From {
        pid,
        tid: pid,
        uid,
        gid: uid,
        cgroup_id,
        comm: "",
    }
}

const V1_GET: &[u8] =
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: python-requests/2.31\r\n\r\n";

fn send(ms: u64, cookie: u64, from: From, offset: u64, data: &[u8]) -> Vec<u8> {
    encode::send(Backend::SkMsg, at(ms), cookie, from, offset, data)
}

#[test]
fn send_from_a_process_older_than_the_daemon() {
    Run::new()
        .feed(&[send(
            1,
            7,
            sk_msg_sender(PYTHON, 1000, CRON_CGROUP),
            0,
            V1_GET,
        )])
        .check("send");
}

/// The send hooks' offsets are TCP sequence numbers, here wrapping; a head may span records.
#[test]
fn send_chunks_make_a_token_request_then_a_v2_request() {
    let from = From {
        pid: PYTHON,
        tid: PYTHON + 3,
        uid: 1000,
        gid: 1000,
        cgroup_id: DOCKER_CGROUP,
        comm: "worker-3",
    };
    let put = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
    let get = b"GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: AQAEAsecret==\r\n\r\n";
    let seq = u64::from(u32::MAX - 20);
    let chunk = |ms, offset: u64, data: &[u8]| {
        encode::send(Backend::Fentry, at(ms), 9, from, offset & 0xffff_ffff, data)
    };
    Run::new()
        .feed(&[
            chunk(1, seq, &put[..30]),
            chunk(2, seq + 30, &put[30..]),
            chunk(3, seq + put.len() as u64, get),
        ])
        .check("send_chunks");
}

/// A command line with a token is redacted; a send belongs to the image that made it, even
/// when the process execs something else right after.
#[test]
fn exec_names_the_image_of_the_send() {
    let curl = 600;
    Run::new()
        .feed(&[
            encode::exec(
                at(1),
                curl,
                CRON,
                0,
                "/usr/bin/curl",
                &[
                    "curl",
                    "-H",
                    "X-aws-ec2-metadata-token: AQAEAsecret==",
                    "http://169.254.169.254/latest/meta-data/",
                ],
            ),
            send(2, 11, sk_msg_sender(curl, 0, CRON_CGROUP), 0, V1_GET),
            encode::exec(at(3), curl, CRON, 0, "/usr/bin/sleep", &["sleep", "1"]),
            send(4, 12, sk_msg_sender(curl, 0, CRON_CGROUP), 0, V1_GET),
        ])
        .check("exec");
}

/// A child takes its parent's image until it execs; its parents run up to init.
#[test]
fn fork_gives_the_child_its_parents_image() {
    let child = 700;
    Run::new()
        .feed(&[
            encode::fork(at(1), PYTHON, child),
            send(2, 13, sk_msg_sender(child, 1000, CRON_CGROUP), 0, V1_GET),
        ])
        .check("fork");
}

/// The caller exits with its request cut off; the close that ends it comes after the exit,
/// and the process is still named as it was.
#[test]
fn exit_keeps_the_sender_named_until_its_grace_ends() {
    let curl = 800;
    Run::new()
        .feed(&[
            encode::exec(at(1), curl, CRON, 0, "/usr/bin/curl", &["curl", "-s"]),
            send(
                2,
                14,
                sk_msg_sender(curl, 0, CRON_CGROUP),
                0,
                b"GET /latest/meta-data/ HTTP/1.1\r\nHost:",
            ),
            encode::exit(at(3), curl),
            encode::close(Backend::SkMsg, at(4), 14),
        ])
        .check("exit");
}

/// A close reports the request it cut off, and nothing for a connection that had none.
#[test]
fn close_ends_a_request_in_flight() {
    let from = sk_msg_sender(PYTHON, 1000, CRON_CGROUP);
    Run::new()
        .feed(&[
            send(1, 15, from, 0, V1_GET),
            send(2, 15, from, V1_GET.len() as u64, b"GET /latest/"),
            encode::close(Backend::SkMsg, at(3), 15),
            send(4, 16, from, 0, V1_GET),
            encode::close(Backend::SkMsg, at(5), 16),
        ])
        .check("close");
}

/// Bytes that no record carried make what they belonged to unknown, never a guess.
#[test]
fn a_gap_in_the_stream_is_a_capture_gap() {
    let from = sk_msg_sender(PYTHON, 1000, CRON_CGROUP);
    Run::new()
        .feed(&[
            send(1, 17, from, 0, b"GET /latest/meta-data/ HTTP/1.1\r\n"),
            send(2, 17, from, 100, b"\r\n"),
        ])
        .check("gap");
}

/// A send hook's first record on a connection may say that its bytes could not be read
/// (sendfile): the request is unknown, from that sender, not missing.
#[test]
fn bytes_lost_first_on_a_connection_are_an_unknown_request_from_their_sender() {
    let from = From {
        pid: PYTHON,
        tid: PYTHON,
        uid: 1000,
        gid: 1000,
        cgroup_id: CRON_CGROUP,
        comm: "python3",
    };
    Run::new()
        .feed(&[encode::lost(
            Backend::Kprobe,
            at(1),
            18,
            from,
            4_000_000_000,
            120,
        )])
        .check("lost_first");
}

/// Records that do not decode are counted, and reported with the kernel's counts.
#[test]
fn undecodable_records_are_counted_as_loss() {
    let mut unknown_kind = encode::exit(at(1), 1);
    unknown_kind[0] = 99;
    let mut unknown_backend = send(2, 18, sk_msg_sender(PYTHON, 1000, 0), 0, V1_GET);
    unknown_backend[4] = 9;
    let mut run = Run::new().feed(&[unknown_kind, unknown_backend, vec![5, 0, 0]]);
    let mut kernel = KernelLoss::default();
    kernel.counters[imds_probe_common::loss::LOSS_RING_BUFFER_PROCESS as usize] = 2;
    kernel.program_runs_missed = 3;
    run.pipeline.report_loss(&kernel);
    // Nothing new: no second event.
    run.pipeline.report_loss(&kernel);
    run.check("loss");
}

/// At shutdown a request still in flight is reported as such.
#[test]
fn shutdown_ends_requests_in_flight() {
    let mut run = Run::new().feed(&[send(
        1,
        19,
        sk_msg_sender(PYTHON, 1000, CRON_CGROUP),
        0,
        b"PUT /latest/api/token HTTP/1.1\r\n",
    )]);
    ELAPSED_NS.with(|elapsed| elapsed.set(2_000_000_000));
    run.pipeline.finish();
    run.check("shutdown");
}

/// An exited process leaves the table on the tick after its grace period, not before, and
/// not only when the table is full.
#[test]
fn the_tick_reaps_exited_processes_after_their_grace() {
    let curl = 900;
    let exe_of_next_send = |run: &mut Run, ms, cookie| {
        run.pipeline.handle(&send(
            ms,
            cookie,
            sk_msg_sender(curl, 0, CRON_CGROUP),
            0,
            V1_GET,
        ));
        let line = run.lines().pop().unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        event["process"]["exe"].as_str().map(str::to_owned)
    };
    let mut run = Run::new().feed(&[
        encode::exec(at(1), curl, CRON, 0, "/usr/bin/curl", &["curl"]),
        encode::exit(at(2), curl),
    ]);
    ELAPSED_NS.with(|elapsed| elapsed.set(29_000_000_000));
    run.pipeline.tick();
    assert_eq!(
        exe_of_next_send(&mut run, 29_000, 20).as_deref(),
        Some("/usr/bin/curl")
    );
    ELAPSED_NS.with(|elapsed| elapsed.set(31_000_000_000));
    run.pipeline.tick();
    assert_eq!(exe_of_next_send(&mut run, 31_000, 21), None);
}

/// The tick follows a step of the wall clock: events after it carry the new time.
#[test]
fn the_tick_follows_clock_steps() {
    let from = sk_msg_sender(PYTHON, 1000, CRON_CGROUP);
    let mut run = Run::new().feed(&[send(1, 22, from, 0, V1_GET)]);
    // NTP steps the wall clock an hour back; the monotonic clock does not move.
    WALL_STEP_NS.with(|step| step.set(-3_600_000_000_000));
    let ts = |run: &Run| {
        let line = run.lines().pop().unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["ts"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    run.pipeline.handle(&send(2, 23, from, 0, V1_GET));
    assert_eq!(
        ts(&run),
        "2027-01-15T08:00:00.002000Z",
        "not before the tick"
    );
    run.pipeline.tick();
    run.pipeline.handle(&send(3, 24, from, 0, V1_GET));
    assert_eq!(ts(&run), "2027-01-15T07:00:00.003000Z");
}

fn any_record() -> impl Strategy<Value = Vec<u8>> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..600);
    prop_oneof![
        bytes.clone(),
        // Known kinds and backends, so decoding gets past the header.
        (1u32..=5, 0u32..=3, bytes).prop_map(|(kind, backend, rest)| {
            let mut record = kind.to_ne_bytes().to_vec();
            record.extend_from_slice(&backend.to_ne_bytes());
            record.extend_from_slice(&rest);
            record
        }),
    ]
}

proptest! {
    #[test]
    fn the_pipeline_takes_any_records_without_panicking(
        records in proptest::collection::vec(any_record(), 0..40),
    ) {
        let mut run = Run::new().feed(&records);
        run.pipeline.tick();
        run.pipeline.finish();
        run.pipeline.report_loss(&KernelLoss::default());
        for line in run.lines() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "{line}");
        }
    }
}

/// Past the socket hash's high-water mark the longest-idle sockets give up their place: the
/// one with a request in flight says so (`evicted`), the newest keep theirs, all are counted.
#[test]
fn idle_sockets_give_up_their_place_in_the_socket_hash() {
    use crate::capture::socket_budget::{HIGH_WATER, LOW_WATER};
    let from = sk_msg_sender(PYTHON, 1000, CRON_CGROUP);
    let mut records = vec![encode::open(at(1), 1), send(1, 1, from, 0, b"GET /latest/")];
    records.extend((2..=HIGH_WATER as u64 + 1).map(|cookie| encode::open(at(2), cookie)));
    let mut run = Run::new().feed(&records);
    let victims = run.pipeline.evict_idle_sockets();
    assert_eq!(victims.len(), HIGH_WATER + 1 - LOW_WATER);
    assert_eq!(victims[0], 1, "the longest idle goes first");
    assert!(
        !victims.contains(&(HIGH_WATER as u64 + 1)),
        "the newest stays"
    );
    assert!(
        run.pipeline.evict_idle_sockets().is_empty(),
        "back under the mark"
    );
    let lines = run.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(r#""reason":"evicted""#), "{}", lines[0]);
    run.pipeline.report_loss(&KernelLoss::default());
    let loss = run.lines().pop().unwrap();
    let expected = format!(r#""sockets_evicted":{}"#, victims.len());
    assert!(loss.contains(&expected), "{loss}");
}

/// Partial heads across all connections are capped: the connection that goes over gives its
/// head up (`heads_shed`), the others keep theirs.
#[test]
fn held_heads_are_capped_across_connections() {
    use super::MAX_HELD_HEAD_BYTES;
    let from = sk_msg_sender(PYTHON, 1000, CRON_CGROUP);
    // Just under the per-connection limit, so each is held, not refused.
    let partial = [b"GET /".as_slice(), &[b'a'; 64_000]].concat();
    let fits = MAX_HELD_HEAD_BYTES / partial.len();
    let records: Vec<Vec<u8>> = (0..=fits as u64)
        .map(|cookie| send(1, 100 + cookie, from, 0, &partial))
        .collect();
    let mut run = Run::new().feed(&records);
    let lines = run.lines();
    assert_eq!(lines.len(), 1, "only the one over the cap: {lines:?}");
    assert!(
        lines[0].contains(r#""reason":"heads_shed""#),
        "{}",
        lines[0]
    );
    run.pipeline.report_loss(&KernelLoss::default());
    assert!(run.lines().pop().unwrap().contains(r#""heads_shed":1"#));
}
