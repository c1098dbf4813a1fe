//! Crash test: a child process appends (single and multi-timeline) as fast as it can and
//! prints an acknowledgement after each durable commit; the parent SIGKILLs it at a random
//! moment, reopens the store and checks that every acknowledged message is there, that no
//! multi-timeline append is torn, and that every timeline is gap-free. Several rounds on one
//! directory, so recovery also runs on recovered data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use roam_store::{IdempotencyKey, MultiAppend, NewMessage, Store, StoreSpec, TimelineId};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

const CHILD_DIR: &str = "ROAM_STORE_CRASH_DIR";
const CHILD_ROUND: &str = "ROAM_STORE_CRASH_ROUND";
const TEST_NAME: &str = "sigkill_at_random_points_loses_nothing_acknowledged";
const ROUNDS: u64 = 5;
const SENDERS: u64 = 4;
const RECIPIENTS: [&str; 3] = ["r1", "r2", "r3"];

fn hot() -> TimelineId {
    TimelineId::inbox("hot")
}

fn outbox(sender: u64) -> TimelineId {
    TimelineId::outbox(format!("s{sender}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let round = std::env::var(CHILD_ROUND)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        runtime().block_on(child(Path::new(&dir), round));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    for round in 1..=ROUNDS {
        let acks = run_and_kill(&dir, round);
        let checked = runtime().block_on(verify(&dir, &acks));
        eprintln!(
            "round {round}: {} acknowledged, {checked} entries checked",
            acks.len()
        );
    }
}

/// The child: appends forever (until killed; it gives up after 30 s in case the parent is gone).
async fn child(dir: &Path, round: u64) {
    let store = Store::open_with(StoreSpec::Embedded(dir.into()), Default::default())
        .await
        .expect("child opens the store");
    let next_id = Arc::new(AtomicU64::new(round * 1_000_000_000));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (tl, ids) = (store.timelines(), next_id.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let seq = tl.append(&hot(), common::msg(id, 0)).await.expect("append");
                println!("ACK S {seq} {id}");
            }
        }));
    }
    for sender in 0..SENDERS {
        let (tl, ids) = (store.timelines(), next_id.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let client_msg_id = format!("{round}-{n}");
                let appended = tl
                    .append_multi(MultiAppend {
                        home: outbox(sender),
                        fanout: RECIPIENTS.iter().map(|r| TimelineId::inbox(*r)).collect(),
                        message: NewMessage {
                            id,
                            created_at_ms: 0,
                            body: client_msg_id.clone().into(),
                        },
                        idempotency: Some(IdempotencyKey::new(format!("s{sender}"), client_msg_id)),
                        extra: Vec::new(),
                        require: Vec::new(),
                    })
                    .await
                    .expect("multi append");
                let seqs: Vec<String> = appended.seqs.iter().map(|(_, s)| s.to_string()).collect();
                println!("ACK M {sender} {id} {}", seqs.join(" "));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    eprintln!("crash child: not killed after 30 s, exiting");
}

/// An acknowledgement line from the child.
#[derive(Debug)]
enum Ack {
    Single {
        seq: u64,
        id: u64,
    },
    Multi {
        sender: u64,
        id: u64,
        seqs: Vec<u64>,
    },
}

fn parse(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("ACK ")?.split(' ');
    let kind = words.next()?;
    let nums: Vec<u64> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
    match (kind, nums.as_slice()) {
        ("S", [seq, id]) => Some(Ack::Single { seq: *seq, id: *id }),
        ("M", [sender, id, seqs @ ..]) if seqs.len() == 1 + RECIPIENTS.len() => Some(Ack::Multi {
            sender: *sender,
            id: *id,
            seqs: seqs.to_vec(),
        }),
        _ => None,
    }
}

/// Starts a child on `dir`, kills it with SIGKILL after a random while, returns its acks.
fn run_and_kill(dir: &Path, round: u64) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // Stops at EOF (the child died); a half-written last line fails to parse.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let it get going (a few hundred acks), then kill at a random moment.
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acks.len() < 300 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            acks.extend(parse(&line));
        }
    }
    assert!(
        acks.len() >= 300,
        "the child acknowledged only {} appends in 20 s",
        acks.len()
    );
    std::thread::sleep(Duration::from_millis(common::random_u64() % 250));
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    acks.extend(lines.try_iter().filter_map(|l| parse(&l)));
    acks
}

/// Reopens the store and checks it against the acks; returns how many entries it checked.
async fn verify(dir: &Path, acks: &[Ack]) -> usize {
    let store = Store::open_with(StoreSpec::Embedded(dir.into()), Default::default())
        .await
        .expect("reopen after SIGKILL");
    let tl = store.timelines();
    let read_all = async |t: &TimelineId| {
        let entries = tl.read(t, 0, usize::MAX).await.unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{t} is gap-free"
        );
        assert_eq!(
            tl.latest_seq(t).await.unwrap(),
            seqs.len() as u64,
            "{t} head matches"
        );
        entries
    };
    // Every acknowledged single append is where its ack said.
    let hot_entries = read_all(&hot()).await;
    for ack in acks {
        if let Ack::Single { seq, id } = ack {
            let entry = hot_entries
                .get(*seq as usize - 1)
                .expect("acknowledged seq exists");
            assert_eq!(entry.id, *id, "hot seq {seq}");
        }
    }
    // Multi appends: acknowledged ones are present everywhere; none is torn.
    let mut inbox_refs: Vec<HashMap<(TimelineId, u64), u64>> = Vec::new();
    for r in RECIPIENTS {
        let entries = read_all(&TimelineId::inbox(r)).await;
        inbox_refs.push(
            entries
                .iter()
                .map(|e| (e.home.clone().expect("inbox entries are references"), e.id))
                .collect(),
        );
    }
    let mut homes: BTreeMap<u64, Vec<roam_store::TimelineEntry>> = BTreeMap::new();
    let mut checked = hot_entries.len();
    for sender in 0..SENDERS {
        let entries = read_all(&outbox(sender)).await;
        for e in &entries {
            // Every stored message reached every recipient and has its idempotency record.
            for refs in &inbox_refs {
                assert_eq!(
                    refs.get(&(outbox(sender), e.seq)),
                    Some(&e.id),
                    "torn multi-append {}",
                    e.id
                );
            }
            let body = e.body.as_deref().expect("home entries hold the body");
            let key = IdempotencyKey::new(format!("s{sender}"), String::from_utf8_lossy(body));
            let sent = tl
                .find_sent(&key)
                .await
                .unwrap()
                .expect("idempotency record");
            assert_eq!((sent.id, sent.home_seq()), (e.id, e.seq));
        }
        checked += entries.len();
        homes.insert(sender, entries);
    }
    let total_refs: usize = inbox_refs.iter().map(HashMap::len).sum();
    let total_homes: usize = homes.values().map(Vec::len).sum();
    assert_eq!(
        total_refs,
        total_homes * RECIPIENTS.len(),
        "no reference without its message"
    );
    let mut seen = HashSet::new();
    for ack in acks {
        if let Ack::Multi { sender, id, seqs } = ack {
            assert!(seen.insert(*id));
            let home = &homes[sender];
            let entry = home
                .get(seqs[0] as usize - 1)
                .expect("acknowledged message exists");
            assert_eq!(entry.id, *id);
            for (r, seq) in RECIPIENTS.iter().zip(&seqs[1..]) {
                let refs = &inbox_refs[RECIPIENTS.iter().position(|x| x == r).unwrap_or(0)];
                assert_eq!(
                    refs.get(&(outbox(*sender), seqs[0])),
                    Some(id),
                    "{r} seq {seq}"
                );
            }
        }
    }
    checked
}
