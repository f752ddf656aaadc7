//! The audit log under crashes: a child process appending through the plugin is killed with
//! SIGKILL at random points, 100 times, and the log is reopened and checked after each kill;
//! and torn tails written by hand.
//!
//! The child is this test binary run again on one `#[ignore]`d test (`audit_crash_child`),
//! told what to do through environment variables. It appends through an orchestrator, the real
//! code path with its syncs, and prints `ack <sequence> <hash>` only once an append has been
//! answered. The parent kills it after a seeded random delay, or once it has acknowledged a
//! seeded random number of records, then reopens the log in-process and checks that `verify`
//! says valid (with `recovered` exactly when the file ended with a torn tail, and the torn
//! bytes gone), that every acknowledged record is there with the hash it was acknowledged
//! with, and that at most one record follows the last acknowledged one (the append the kill
//! interrupted between its write and its answer) and nothing else. Each log takes five kills in
//! turn, so that a child also opens a log its predecessor was killed writing; every other log
//! has a head file, which must match the log or be one record behind it.
//!
//! A SIGKILL rarely tears a record: the kernel finishes a write that has begun, and the page
//! cache outlives the process. So after every other kill the parent also simulates a power cut
//! on top of it: when the file holds a record past the last acknowledged one (which may not have
//! been synced yet), it cuts the file anywhere inside that record, and the reopened log must
//! drop exactly those bytes and report them. The summary line says how many torn tails came from
//! the kills alone and how many from the cuts.
//!
//! `AUDIT_CRASH_SEED` replays a run of the parent; `AUDIT_CRASH_RUNS` changes the number of kills.

mod audit_support;

use audit_support::{GENESIS, append, audit_config, orchestrator, parse, splitmix, temp_dir, verify};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD: &str = "audit_crash_child";
const LOG_VAR: &str = "AUDIT_CRASH_CHILD_LOG";
const HEAD_VAR: &str = "AUDIT_CRASH_CHILD_HEAD";
const SEED_VAR: &str = "AUDIT_CRASH_CHILD_SEED";
const BIG_VAR: &str = "AUDIT_CRASH_CHILD_BIG";
const KILLS_PER_LOG: usize = 5;

/// The child: appends until it is killed (or has appended a bounded number of records).
#[tokio::test]
#[ignore = "the child process of audit_log_survives_sigkill_at_random_points, which runs it"]
async fn audit_crash_child() {
    let Some(log) = std::env::var_os(LOG_VAR) else {
        return;
    };
    let head = std::env::var_os(HEAD_VAR);
    let mut rng: u64 = std::env::var(SEED_VAR).ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    // Big records take several pages to write, so that a kill can land inside the write.
    let big = std::env::var_os(BIG_VAR).is_some();
    let config = audit_config(Path::new(&log), head.as_deref().map(Path::new));
    let orch = orchestrator(config).await.expect("builds");
    let mut stdout = std::io::stdout();
    let bound = if big { 40 } else { 300 };
    for i in 0..bound {
        let len = if big {
            8 * 1024 + (splitmix(&mut rng) % (88 * 1024)) as usize
        } else {
            8 + (splitmix(&mut rng) % 200) as usize
        };
        let fill = char::from(b'a' + (i % 26) as u8);
        let answer = append(&orch, &fill.to_string().repeat(len)).await;
        writeln!(
            stdout,
            "ack {} {}",
            answer["sequence"],
            answer["hash"].as_str().expect("hash")
        )
        .expect("stdout");
        stdout.flush().expect("stdout");
    }
}

/// What one kill left.
#[derive(Debug, Default)]
struct Totals {
    runs: usize,
    killed_before_first_ack: usize,
    exited_before_kill: usize,
    torn_by_kill: usize,
    power_cuts: usize,
    torn_tails: usize,
    torn_bytes: u64,
    acknowledged: u64,
    unacknowledged_kept: u64,
    head_behind: usize,
    records_present: u64,
}

/// The `ack` lines a child printed, as they come; the channel closes when its stdout does.
fn read_acks(stdout: std::process::ChildStdout) -> mpsc::Receiver<(u64, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut short by the kill has no hash, or a short one, and is not counted.
            let words: Vec<&str> = line.split(' ').collect();
            let ack = match words[..] {
                ["ack", seq, hash] if hash.len() == 64 => seq.parse().ok().map(|seq| (seq, hash.to_owned())),
                _ => None,
            };
            if let Some(ack) = ack {
                if tx.send(ack).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

#[tokio::test]
async fn audit_log_survives_sigkill_at_random_points() {
    let runs: usize = std::env::var("AUDIT_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let base_seed: u64 = std::env::var("AUDIT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_A0D1);
    let exe = std::env::current_exe().expect("test binary");
    let dir = temp_dir("sigkill");
    let started = Instant::now();
    let mut totals = Totals::default();

    // Per log: the records verified present after the last kill, and the last acknowledgement.
    let mut floor = 0u64;
    let mut last_ack: Option<(u64, String)> = None;
    let mut acked_hashes: Vec<(u64, String)> = Vec::new();
    for run in 0..runs {
        let group = run / KILLS_PER_LOG;
        let log = dir.join(format!("log-{group}/audit.log"));
        let head = (group % 2 == 1).then(|| dir.join(format!("log-{group}/audit.head")));
        if run % KILLS_PER_LOG == 0 {
            floor = 0;
            last_ack = None;
            acked_hashes.clear();
        }
        let mut rng = base_seed ^ (run as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        let seed = splitmix(&mut rng);
        let big = splitmix(&mut rng) % 3 == 0;
        // A third of the kills after a delay from the start (0-30 ms: often before the child
        // has opened the log, or while it opens it), the rest once it has acknowledged 1-20
        // records (1-6 when they are big, 8-96 KiB), then 0-2 ms later.
        let by_delay = splitmix(&mut rng) % 3 == 0;
        let delay = Duration::from_micros(splitmix(&mut rng) % 30_000);
        let after = 1 + splitmix(&mut rng) % if big { 6 } else { 12 };
        let spin = Duration::from_micros(splitmix(&mut rng) % 2_000);
        let power_cut = splitmix(&mut rng) % 2 == 0;
        let context = format!(
            "run {run} (AUDIT_CRASH_SEED={base_seed}, log {}, head file {}, big {big}, {})",
            log.display(),
            head.is_some(),
            if by_delay {
                format!("killed {delay:?} after spawn")
            } else {
                format!("killed {spin:?} after {after} acks")
            }
        );

        let mut command = Command::new(&exe);
        command
            .args(["--exact", CHILD, "--ignored", "--nocapture", "--test-threads=1", "-q"])
            .env(LOG_VAR, &log)
            .env(SEED_VAR, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &head {
            Some(head) => command.env(HEAD_VAR, head),
            None => command.env_remove(HEAD_VAR),
        };
        if big {
            command.env(BIG_VAR, "1");
        } else {
            command.env_remove(BIG_VAR);
        }
        let mut child = command.spawn().expect("spawns the child");
        let spawned = Instant::now();
        let acks = read_acks(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut seen = Vec::new();
        if by_delay {
            std::thread::sleep(delay.saturating_sub(spawned.elapsed()));
        } else {
            while (seen.len() as u64) < after {
                match acks.recv_timeout(Duration::from_secs(20)) {
                    Ok(ack) => seen.push(ack),
                    Err(_) => break,
                }
            }
            let until = Instant::now() + spin;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        if child.try_wait().expect("polls the child").is_some() {
            totals.exited_before_kill += 1;
        }
        // SIGKILL on Unix.
        let _ = child.kill();
        let status = child.wait().expect("reaps the child");
        seen.extend(acks.iter());
        let stderr = stderr.join().unwrap_or_default();
        assert!(
            by_delay || (seen.len() as u64) >= after,
            "{context}: the child acknowledged {} records and stopped ({status}): {stderr}",
            seen.len()
        );
        if seen.is_empty() {
            totals.killed_before_first_ack += 1;
        }
        for pair in seen.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "{context}: acknowledgements out of order");
        }
        if let Some(first) = seen.first() {
            // The child continues the log as the last check left it.
            assert_eq!(first.0, floor, "{context}: the first acknowledged sequence");
        }
        totals.acknowledged += seen.len() as u64;
        acked_hashes.extend(seen.iter().cloned());
        if let Some(last) = seen.last() {
            last_ack = Some(last.clone());
        }

        // What an auditor finds, by hand, before the plugin touches the file.
        let acked_end = last_ack.as_ref().map_or(0, |a| a.0 + 1).max(floor);
        let mut before = std::fs::read(&log).unwrap_or_default();
        let mut by_hand = parse(&before);
        if before.len() > by_hand.intact_len {
            totals.torn_by_kill += 1;
        }
        // A power cut on top of the kill, every other run: the record written past the last
        // acknowledged one may not have reached the disk whole, so cut it anywhere inside. (Not
        // when the head file names it: then it was synced, and a power cut cannot take it.)
        let unacked_start = by_hand.starts.get(acked_end as usize).copied();
        let head_names_it = |seq: u64| {
            head.as_ref()
                .and_then(|h| std::fs::read(h).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["sequence"] == seq)
        };
        if let Some(start) = unacked_start.filter(|_| power_cut && !head_names_it(acked_end)) {
            let cut = start + 1 + (splitmix(&mut rng) as usize) % (before.len() - start - 1);
            before.truncate(cut);
            std::fs::write(&log, &before).expect("cuts the log");
            by_hand = parse(&before);
            totals.power_cuts += 1;
        }
        let head_before = head
            .as_ref()
            .and_then(|h| std::fs::read(h).ok())
            .map(|b| serde_json::from_slice::<Value>(&b).expect("head json"));
        let torn = (before.len() - by_hand.intact_len) as u64;
        if torn > 0 {
            totals.torn_tails += 1;
            totals.torn_bytes += torn;
        }

        // Reopened in-process, and verified against the last acknowledgement.
        let orch = orchestrator(audit_config(&log, head.as_deref())).await.expect("builds");
        let anchor = last_ack
            .as_ref()
            .map(|(seq, hash)| json!({"sequence": seq, "hash": hash}));
        let report = verify(&orch, anchor.as_ref()).await;
        assert_eq!(report["valid"], true, "{context}: {report}");
        let records = report["records"].as_u64().expect("records");
        assert_eq!(records, by_hand.records.len() as u64, "{context}: {report}");
        if torn > 0 {
            assert_eq!(report["recovered"]["truncated_bytes"], torn, "{context}: {report}");
            assert_eq!(report["recovered"]["kept_records"], records, "{context}: {report}");
        } else {
            assert_eq!(report["recovered"], Value::Null, "{context}: {report}");
        }
        if anchor.is_some() {
            assert_eq!(report["anchor"], "matched", "{context}: {report}");
        }
        assert!(
            records >= acked_end,
            "{context}: {records} records, but {acked_end} were acknowledged or verified"
        );
        assert!(
            records <= acked_end + 1,
            "{context}: {records} records, but only {acked_end} were acknowledged: more than the one append a kill can interrupt"
        );
        totals.unacknowledged_kept += records - acked_end;
        totals.records_present += records - floor;

        // The file now holds exactly the intact frames, each acknowledged record with its hash.
        let after_open = std::fs::read(&log).expect("log");
        assert_eq!(
            after_open.len(),
            by_hand.intact_len,
            "{context}: the torn tail is still there"
        );
        assert_eq!(
            after_open[..],
            before[..by_hand.intact_len],
            "{context}: intact records changed"
        );
        let records_by_hand = parse(&after_open).records;
        for (seq, hash) in &acked_hashes {
            assert_eq!(
                records_by_hand.get(*seq as usize).map(|r| r.hash.as_str()),
                Some(hash.as_str()),
                "{context}: acknowledged record {seq}"
            );
        }
        if let Some(head) = &head {
            // The head file named the last record, or the one before it (the kill came between
            // the log's sync and the head file's rename), and never one before the last
            // acknowledged; the open moved it over that one record.
            // No head file yet: no child got as far as opening the log, so it is empty.
            let stored_before = head_before.unwrap_or_else(|| {
                assert_eq!(records, 0, "{context}: a log without its head file");
                json!({"sequence": null, "hash": GENESIS})
            });
            let behind = match stored_before["sequence"].as_u64() {
                None => {
                    assert_eq!(stored_before["hash"], GENESIS, "{context}");
                    assert!(last_ack.is_none(), "{context}: {stored_before}");
                    records
                }
                Some(seq) => {
                    assert!(
                        last_ack.as_ref().is_none_or(|a| seq >= a.0),
                        "{context}: {stored_before}"
                    );
                    assert_eq!(stored_before["hash"], records_by_hand[seq as usize].hash, "{context}");
                    records - seq - 1
                }
            };
            assert!(
                behind <= 1,
                "{context}: the head file was {behind} records behind: {stored_before}"
            );
            assert_eq!(report["head_file"], "matched", "{context}: {report}");
            if behind == 1 {
                totals.head_behind += 1;
                assert_eq!(report["head_file_adopted"], 1, "{context}: {report}");
            }
            let stored: Value = serde_json::from_slice(&std::fs::read(head).expect("head file")).expect("head json");
            let expected = match records {
                0 => json!({"sequence": null, "hash": GENESIS}),
                n => json!({"sequence": n - 1, "hash": records_by_hand[n as usize - 1].hash}),
            };
            assert_eq!(stored, expected, "{context}");
        }
        drop(orch);
        floor = records;
        totals.runs += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "audit crash test: {} kills in {elapsed:.2?} ({} before the first acknowledgement, {} children \
         done before their kill); {} torn tails truncated ({} bytes; {} left by a kill alone, {} by a \
         simulated power cut); {} records acknowledged, {} present after the kills ({} of them never \
         acknowledged: written, then killed before the answer); a head file one record behind the log, \
         and moved over it by the next open, after {} kills",
        totals.runs,
        totals.killed_before_first_ack,
        totals.exited_before_kill,
        totals.torn_tails,
        totals.torn_bytes,
        totals.torn_by_kill,
        totals.power_cuts,
        totals.acknowledged,
        totals.records_present,
        totals.unacknowledged_kept,
        totals.head_behind,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three records appended through the plugin; the log's path and bytes.
async fn three_records(name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let log = temp_dir(name).join("audit.log");
    let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
    for i in 0..3 {
        append(&orch, &format!("r{i}")).await;
    }
    let bytes = std::fs::read(&log).expect("log");
    (log, bytes)
}

#[tokio::test]
async fn a_last_frame_with_a_bad_checksum_is_truncated_and_reported() {
    let (log, bytes) = three_records("bad-crc").await;
    let starts = parse(&bytes).starts;
    // The body of the last frame changed after its checksum was written (a torn write that left
    // the length whole).
    let mut damaged = bytes.clone();
    let at = starts[2] + 8 + 10;
    damaged[at] ^= 0x20;
    std::fs::write(&log, &damaged).expect("write");
    let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
    let report = verify(&orch, None).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["records"], 2);
    assert_eq!(
        report["recovered"],
        json!({"truncated_bytes": bytes.len() - starts[2], "kept_records": 2})
    );
    assert_eq!(std::fs::read(&log).expect("log"), bytes[..starts[2]]);
    // The chain goes on from the record before.
    assert_eq!(append(&orch, "next").await["sequence"], 2);
    assert_eq!(verify(&orch, None).await["valid"], true);
}

#[tokio::test]
async fn a_header_cut_short_is_truncated_and_reported() {
    let (log, bytes) = three_records("short-header").await;
    for extra in [1usize, 3, 7] {
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe][..extra]);
        std::fs::write(&log, &torn).expect("write");
        let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
        let report = verify(&orch, None).await;
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["records"], 3);
        assert_eq!(
            report["recovered"],
            json!({"truncated_bytes": extra, "kept_records": 3})
        );
        assert_eq!(std::fs::read(&log).expect("log"), bytes);
    }
}

#[tokio::test]
async fn a_frame_cut_anywhere_inside_is_truncated_to_the_frame_before() {
    let (log, bytes) = three_records("cut").await;
    let starts = parse(&bytes).starts;
    // Every cut inside the last frame: its header, its body, one byte short of whole.
    for cut in (starts[2] + 1)..bytes.len() {
        std::fs::write(&log, &bytes[..cut]).expect("write");
        let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
        let report = verify(&orch, None).await;
        assert_eq!(report["valid"], true, "cut at {cut}: {report}");
        assert_eq!(report["records"], 2, "cut at {cut}");
        assert_eq!(report["recovered"]["truncated_bytes"], cut - starts[2], "cut at {cut}");
        assert_eq!(std::fs::read(&log).expect("log"), bytes[..starts[2]], "cut at {cut}");
    }
}
