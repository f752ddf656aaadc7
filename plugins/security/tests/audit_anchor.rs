//! Anchoring the audit log's head: a forger who rewrites the whole tail of the log from an edit
//! onward, recomputing the chain (with the frame format written by hand in `audit_support`),
//! passes a plain `verify`, and is caught by an anchor the embedder kept (`{"op": "verify",
//! "anchor": ...}`) and by a head file (`audit.head_file`). Also: what the head file holds, a
//! crash between the log and the head file, the refusals, and garbage anchors.

mod audit_support;

use audit_support::{GENESIS, append, audit, audit_config, orchestrator, parse, rewrite_from, temp_dir, verify};
use plugin_api::HealthState;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A log of `n` records written through the plugin (with a head file when given); the answers.
async fn log_of(log: &Path, head: Option<&Path>, n: usize) -> Vec<Value> {
    let orch = orchestrator(audit_config(log, head)).await.expect("builds");
    let mut answers = Vec::new();
    for i in 0..n {
        answers.push(append(&orch, &format!("svc-{i}")).await);
    }
    answers
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("file")).expect("json")
}

/// `verify` through a fresh orchestrator (what an auditor runs later).
async fn verify_fresh(log: &Path, head: Option<&Path>, anchor: Option<&Value>) -> Value {
    let orch = orchestrator(audit_config(log, head)).await.expect("builds");
    verify(&orch, anchor).await
}

fn reason(report: &Value) -> &str {
    report["reason"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_whole_tail_rewrite_passes_plain_verify_but_not_an_anchor() {
    let log = temp_dir("anchor-rewrite").join("audit.log");
    let answers = log_of(&log, None, 5).await;
    let original = std::fs::read(&log).expect("log");

    // Record 2 edited and every record after it re-chained: a well-formed log.
    let forged = rewrite_from(&original, 2, None, |b| b.resource = "nothing-to-see".into());
    assert_ne!(forged, original);
    std::fs::write(&log, &forged).expect("write");
    let plain = verify_fresh(&log, None, None).await;
    assert_eq!(
        (plain["valid"].as_bool(), plain["records"].as_u64()),
        (Some(true), Some(5)),
        "{plain}"
    );
    assert_eq!(plain.get("anchor"), None);

    // The last append's answer, kept by the embedder, no longer matches.
    for kept in [&answers[4], &answers[2]] {
        let report = verify_fresh(&log, None, Some(kept)).await;
        assert_eq!(report["valid"], false, "{report}");
        assert_eq!(report["anchor"], "mismatch", "{report}");
        assert!(reason(&report).contains("rewritten"), "{report}");
        assert_eq!(report.get("first_bad"), None, "{report}");
    }
    // An anchor older than the edit vouches only for what precedes it.
    let older = verify_fresh(&log, None, Some(&answers[1])).await;
    assert_eq!(
        (older["valid"].as_bool(), older["anchor"].as_str()),
        (Some(true), Some("matched"))
    );

    // A forger who also drops the last records: the anchor's record is missing.
    let shorter = rewrite_from(&original, 2, Some(3), |b| b.outcome = "denied".into());
    std::fs::write(&log, &shorter).expect("write");
    assert_eq!(verify_fresh(&log, None, None).await["valid"], true);
    let report = verify_fresh(&log, None, Some(&answers[4])).await;
    assert_eq!(
        (report["valid"].as_bool(), report["anchor"].as_str()),
        (Some(false), Some("missing")),
        "{report}"
    );
    assert!(reason(&report).contains("removed"), "{report}");
    // Simply cutting records off the end between two runs is caught the same way.
    std::fs::write(&log, &original[..parse(&original).starts[4]]).expect("write");
    let report = verify_fresh(&log, None, Some(&answers[4])).await;
    assert_eq!(report["anchor"], "missing", "{report}");
    // A broken chain is still reported first, with the record it starts at.
    let mut edited = original.clone();
    let at = parse(&original).starts[1] + 30;
    edited[at] ^= 1;
    std::fs::write(&log, &edited).expect("write");
    let report = verify_fresh(&log, None, Some(&answers[4])).await;
    assert_eq!(
        (report["valid"].as_bool(), report["first_bad"].as_u64()),
        (Some(false), Some(1))
    );
    assert_eq!(report["anchor"], "matched", "{report}");
}

#[tokio::test]
async fn a_matching_anchor_passes() {
    let log = temp_dir("anchor-match").join("audit.log");
    let answers = log_of(&log, None, 4).await;
    let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
    for kept in &answers {
        let report = verify(&orch, Some(kept)).await;
        assert_eq!(
            (report["valid"].as_bool(), report["anchor"].as_str()),
            (Some(true), Some("matched"))
        );
        assert_eq!(report["records"], 4);
    }
    // Upper-case hex is the same hash; extra fields of a stored answer are ignored.
    let upper = json!({"sequence": 3, "hash": answers[3]["hash"].as_str().expect("hash").to_uppercase(), "at": "x"});
    assert_eq!(verify(&orch, Some(&upper)).await["anchor"], "matched");
    // `"anchor": null` is no anchor.
    let report = audit(&orch, json!({"op": "verify", "anchor": null}))
        .await
        .expect("verifies");
    assert_eq!((report["valid"].as_bool(), report.get("anchor")), (Some(true), None));
    // An anchor beyond the log, or with another hash.
    let beyond = json!({"sequence": 9, "hash": answers[3]["hash"]});
    assert_eq!(verify(&orch, Some(&beyond)).await["anchor"], "missing");
    let other = json!({"sequence": 2, "hash": answers[3]["hash"]});
    let report = verify(&orch, Some(&other)).await;
    assert_eq!(
        (report["valid"].as_bool(), report["anchor"].as_str()),
        (Some(false), Some("mismatch"))
    );
}

#[tokio::test]
async fn garbage_anchors_are_invalid_requests() {
    let log = temp_dir("anchor-garbage").join("audit.log");
    let answers = log_of(&log, None, 1).await;
    let hash = answers[0]["hash"].clone();
    let orch = orchestrator(audit_config(&log, None)).await.expect("builds");
    let cases = [
        (json!("0:abc"), "`anchor` must be an object"),
        (json!(7), "`anchor` must be an object"),
        (json!([0, hash]), "`anchor` must be an object"),
        (json!(true), "`anchor` must be an object"),
        (json!({}), "anchor.sequence"),
        (json!({"hash": hash}), "anchor.sequence"),
        (json!({"sequence": "0", "hash": hash}), "anchor.sequence"),
        (json!({"sequence": -1, "hash": hash}), "anchor.sequence"),
        (json!({"sequence": 0.5, "hash": hash}), "anchor.sequence"),
        (json!({"sequence": 0}), "anchor.hash"),
        (json!({"sequence": 0, "hash": 12}), "anchor.hash"),
        (json!({"sequence": 0, "hash": "abc"}), "anchor.hash"),
        (json!({"sequence": 0, "hash": "g".repeat(64)}), "anchor.hash"),
        (json!({"sequence": 0, "hash": null}), "anchor.hash"),
    ];
    for (anchor, expected) in cases {
        let err = audit(&orch, json!({"op": "verify", "anchor": anchor}))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("invalid request"), "{anchor}: {text}");
        assert!(text.contains(expected), "{anchor}: {text}");
        assert!(text.contains("an `append` answer"), "{anchor}: {text}");
    }
}

/// A log and its head file in one directory (a test; in production the head file belongs
/// somewhere the log's writer cannot rewrite).
fn log_and_head(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    (dir.join("audit.log"), dir.join("anchor/audit.head"))
}

#[tokio::test]
async fn the_head_file_is_created_on_first_use_and_names_every_acknowledged_append() {
    let (log, head) = log_and_head("head-follows");
    let orch = orchestrator(audit_config(&log, Some(&head))).await.expect("builds");
    // Opened on first use: an empty log, and a head file that says so.
    let report = verify(&orch, None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(true), Some("matched")),
        "{report}"
    );
    assert_eq!(report.get("head_file_adopted"), None);
    assert_eq!(read_json(&head), json!({"sequence": null, "hash": GENESIS}));
    for i in 0..3 {
        let answer = append(&orch, &format!("r{i}")).await;
        // The answer comes once the head file names the record.
        assert_eq!(read_json(&head), answer);
    }
    assert!(
        !head.with_file_name("audit.head.tmp").exists(),
        "the temporary file is renamed away"
    );
    let report = verify(&orch, None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(true), Some("matched"))
    );
    drop(orch);

    // Turning the head file on for an existing log: created over it, and said so.
    std::fs::remove_file(&head).expect("remove");
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file_adopted"].as_u64()),
        (Some(true), Some(3)),
        "{report}"
    );
    assert_eq!(read_json(&head)["sequence"], 2);
}

#[tokio::test]
async fn a_whole_tail_rewrite_is_caught_by_the_head_file_and_appends_stop() {
    let (log, head) = log_and_head("head-rewrite");
    let answers = log_of(&log, Some(&head), 5).await;
    let original = std::fs::read(&log).expect("log");
    let head_bytes = std::fs::read(&head).expect("head");

    let forged = rewrite_from(&original, 1, None, |b| b.agent_id = "someone-else".into());
    std::fs::write(&log, &forged).expect("write");
    // Without the head file the forgery is a valid log.
    assert_eq!(verify_fresh(&log, None, None).await["valid"], true);
    let orch = orchestrator(audit_config(&log, Some(&head))).await.expect("builds");
    let report = verify(&orch, None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("mismatch")),
        "{report}"
    );
    assert!(
        reason(&report).contains("head file") && reason(&report).contains("rewritten"),
        "{report}"
    );
    // Both anchors at once: each says what it found.
    let report = verify(&orch, Some(&answers[4])).await;
    assert_eq!(
        (report["anchor"].as_str(), report["head_file"].as_str()),
        (Some("mismatch"), Some("mismatch"))
    );
    // Appends are refused, the head file kept as evidence, and the plugin reports itself degraded.
    let err = audit(&orch, json!({"agent_id": "a", "action": "b", "resource": "c"}))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("appends refused"), "{err}");
    assert!(err.to_string().contains("remove the head file"), "{err}");
    assert_eq!(std::fs::read(&head).expect("head"), head_bytes);
    assert_eq!(std::fs::read(&log).expect("log"), forged);
    let health = orch.health().await;
    let security = &health["SecurityIntegrationPlugin"];
    assert_eq!(security.state, HealthState::Degraded, "{security:?}");
    assert!(
        security
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("refuses appends"),
        "{security:?}"
    );
    drop(orch);

    // A rewrite that also drops the last record: the head's record is missing.
    std::fs::write(&log, rewrite_from(&original, 1, Some(4), |b| b.action = "read".into())).expect("write");
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("missing")),
        "{report}"
    );
    // The head file itself tampered with.
    std::fs::write(&log, &original).expect("restore");
    std::fs::write(&head, b"{\"sequence\": 4}").expect("write");
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("unreadable"))
    );

    // Restored: valid, and appends go on.
    std::fs::write(&head, &head_bytes).expect("restore");
    let orch = orchestrator(audit_config(&log, Some(&head))).await.expect("builds");
    assert_eq!(verify(&orch, None).await["head_file"], "matched");
    assert_eq!(append(&orch, "after").await["sequence"], 5);
    // Removed while the plugin runs: verify says so.
    std::fs::remove_file(&head).expect("remove");
    let report = verify(&orch, None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("absent"))
    );
}

#[tokio::test]
async fn a_crash_between_the_log_and_the_head_file_is_tolerated_once() {
    let (log, head) = log_and_head("head-crash");
    log_of(&log, Some(&head), 3).await;
    let head_at_2 = std::fs::read(&head).expect("head");
    log_of(&log, Some(&head), 1).await;
    let full = std::fs::read(&log).expect("log");

    // The log synced record 3, and the crash came before the head file's rename.
    std::fs::write(&head, &head_at_2).expect("write");
    let orch = orchestrator(audit_config(&log, Some(&head))).await.expect("builds");
    let report = verify(&orch, None).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["head_file"], "matched", "{report}");
    assert_eq!(report["head_file_adopted"], 1, "{report}");
    // Moved over record 3 at open, before anything is appended.
    assert_eq!(read_json(&head)["sequence"], 3);
    assert_eq!(append(&orch, "next").await["sequence"], 4);
    drop(orch);

    // Two records past the head file: not a crash, which leaves at most one.
    std::fs::write(&log, &full).expect("write");
    // Record 4 appended by a plugin configured without the head file.
    log_of(&log, None, 1).await;
    std::fs::write(&head, &head_at_2).expect("write");
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("behind")),
        "{report}"
    );
    assert!(reason(&report).contains("2 records past"), "{report}");
}

#[tokio::test]
async fn a_damaged_record_the_head_file_names_is_not_truncated_as_a_torn_tail() {
    let (log, head) = log_and_head("head-torn");
    log_of(&log, Some(&head), 3).await;
    let bytes = std::fs::read(&log).expect("log");
    let mut damaged = bytes.clone();
    let last = *damaged.last().expect("bytes");
    *damaged.last_mut().expect("bytes") = last ^ 0x08;
    std::fs::write(&log, &damaged).expect("write");

    // Without the head file it looks like a torn write, and is truncated.
    let copy = log.with_file_name("copy.log");
    std::fs::write(&copy, &damaged).expect("write");
    let report = verify_fresh(&copy, None, None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["records"].as_u64()),
        (Some(true), Some(2))
    );

    // With it, record 2 was acknowledged: the damage is kept and reported.
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(
        (report["first_bad"].as_u64(), report["head_file"].as_str()),
        (Some(2), Some("missing"))
    );
    assert_eq!(report["recovered"], Value::Null);
    assert_eq!(std::fs::read(&log).expect("log"), damaged);

    // A truncation of the last record, short of a whole frame: the same.
    std::fs::write(&log, &bytes[..bytes.len() - 9]).expect("write");
    let report = verify_fresh(&log, Some(&head), None).await;
    assert_eq!(
        (report["valid"].as_bool(), report["head_file"].as_str()),
        (Some(false), Some("missing"))
    );
    assert_eq!(std::fs::read(&log).expect("log").len(), bytes.len() - 9);
}

#[tokio::test]
async fn head_file_configuration_is_checked() {
    let dir = temp_dir("head-config");
    let log = dir.join("audit.log");
    let cases = [
        (
            json!({"audit": {"path": log, "head_fil": dir.join("h")}}),
            "unknown field `head_fil`",
        ),
        (
            json!({"audit": {"path": log, "head_file": log}}),
            "it must be another file",
        ),
        (json!({"audit": {"path": log, "head_file": ""}}), "does not name a file"),
        (json!({"audit": {"path": log, "head_file": 5}}), "expected path string"),
    ];
    for (config, expected) in cases {
        let err = orchestrator(config.clone()).await.expect_err("refused");
        assert!(err.to_string().contains(expected), "{config}: {err}");
        assert!(err.to_string().contains("SecurityIntegrationPlugin"), "{err}");
    }
}

#[tokio::test]
async fn an_append_whose_head_file_cannot_be_written_is_taken_back() {
    let (log, head) = log_and_head("head-unwritable");
    let orch = orchestrator(audit_config(&log, Some(&head))).await.expect("builds");
    append(&orch, "r0").await;
    let before = std::fs::read(&log).expect("log");
    // The temporary file's name taken by a directory: the head file cannot be replaced.
    let temp = head.with_file_name("audit.head.tmp");
    std::fs::create_dir(&temp).expect("dir");
    let err = audit(&orch, json!({"agent_id": "a", "action": "b", "resource": "r1"}))
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("head file") && err.to_string().contains("not kept"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&log).expect("log"),
        before,
        "the record was taken back out of the log"
    );
    std::fs::remove_dir(&temp).expect("dir");
    // The sequence number was not used up, and the log is whole.
    assert_eq!(append(&orch, "r1").await["sequence"], 1);
    let report = verify(&orch, None).await;
    assert_eq!(
        (
            report["valid"].as_bool(),
            report["records"].as_u64(),
            report["head_file"].as_str()
        ),
        (Some(true), Some(2), Some("matched")),
        "{report}"
    );
}
