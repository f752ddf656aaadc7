//! SecurityIntegrationPlugin through a real orchestrator: every capability on good input, on
//! each bad input the contract lists, and on garbage; the audit log after a crash and after
//! tampering. The keys under tests/keys were generated for these tests only.

mod audit_support;

use audit_support::orchestrator;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use orchestrator_core::{Orchestrator, OrchestratorError};
use plugin_api::IntegrationRequest;
use plugin_security::SecurityIntegrationPlugin;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn key(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)).expect("test key")
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orch-security-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn config(audit: &Path) -> Value {
    json!({
        "jwt": {
            "hs256_secret": SECRET,
            "rs256_public_key_pem": key("rsa_public.pem"),
            "es256_public_key_pem": key("ec_public.pem"),
            "issuer": "https://issuer.example",
            "audience": "orchestrator",
            "leeway_s": 5
        },
        "audit": {"path": audit},
        "rbac": {
            "roles": {
                "viewer": {"allow": ["agents:read"]},
                "operator": {"inherits": ["viewer"], "allow": ["tasks:submit", "agents:*"]}
            },
            "subjects": {"alice": ["operator"], "bob": ["viewer"]}
        }
    })
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Result<Value, OrchestratorError> {
    orch.execute(IntegrationRequest::new(capability, data)).await.map(|r| {
        assert!(r.success, "{r:?}");
        r.data
    })
}

fn claims() -> Value {
    json!({
        "sub": "alice",
        "iss": "https://issuer.example",
        "aud": "orchestrator",
        "exp": now() + 600,
        "scope": "tasks:submit agents:read",
    })
}

fn token(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key("rsa_private.pem").as_bytes()).expect("rsa key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key("ec_private.pem").as_bytes()).expect("ec key"),
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).expect("encodes")
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

async fn refused(orch: &Orchestrator, token: &str) -> String {
    let out = call(orch, "oauth_auth", json!({ "token": token }))
        .await
        .expect("answered");
    assert_eq!(out["authenticated"], false, "accepted: {out}");
    out["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_are_accepted() {
    let dir = temp_dir("valid");
    let orch = orchestrator(config(&dir.join("audit.log"))).await.expect("builds");
    // One set of claims, so that `expires_at` is compared with the `exp` that was signed.
    let signed = claims();
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let t = token(alg, &signed);
        let out = call(
            &orch,
            "oauth_auth",
            json!({ "token": format!("Bearer {t}"), "required_scopes": ["tasks:submit"] }),
        )
        .await
        .expect("answered");
        assert_eq!(out["authenticated"], true, "{alg:?}: {out}");
        assert_eq!(out["subject"], "alice");
        assert_eq!(out["scopes"], json!(["agents:read", "tasks:submit"]));
        assert_eq!(out["expires_at"], signed["exp"]);
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_a_reason() {
    let dir = temp_dir("bad");
    let orch = orchestrator(config(&dir.join("audit.log"))).await.expect("builds");
    let good = token(Algorithm::HS256, &claims());
    let segments: Vec<&str> = good.split('.').collect();

    // alg none, in both spellings.
    for alg in ["none", "None"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let none = format!("{header}.{}.", segments[1]);
        assert!(refused(&orch, &none).await.contains("header"), "alg {alg}");
    }
    // HS256 "signed" with the RSA public key: checked against the HS256 secret, and fails.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(key("rsa_public.pem").as_bytes()),
    )
    .expect("encodes");
    assert!(refused(&orch, &confused).await.contains("InvalidSignature"));
    // Expired and not yet valid (beyond the 5 s leeway).
    let expired = token(Algorithm::RS256, &with(claims(), json!({"exp": now() - 60})));
    assert!(refused(&orch, &expired).await.contains("ExpiredSignature"));
    let early = token(Algorithm::ES256, &with(claims(), json!({"nbf": now() + 600})));
    assert!(refused(&orch, &early).await.contains("ImmatureSignature"));
    // Audience and issuer: wrong or missing.
    assert!(
        refused(
            &orch,
            &token(Algorithm::HS256, &with(claims(), json!({"aud": "someone-else"})))
        )
        .await
        .contains("InvalidAudience")
    );
    assert!(
        refused(&orch, &token(Algorithm::HS256, &with(claims(), json!({"aud": null}))))
            .await
            .contains("aud")
    );
    assert!(
        refused(
            &orch,
            &token(
                Algorithm::HS256,
                &with(claims(), json!({"iss": "https://evil.example"}))
            )
        )
        .await
        .contains("InvalidIssuer")
    );
    assert!(
        refused(&orch, &token(Algorithm::HS256, &with(claims(), json!({"iss": null}))))
            .await
            .contains("iss")
    );
    // Signed with another key.
    let other = encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(key("rsa_other_private.pem").as_bytes()).expect("key"),
    )
    .expect("encodes");
    assert!(refused(&orch, &other).await.contains("InvalidSignature"));
    // Payload tampered with after signing.
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with(claims(), json!({"sub": "root"}))).expect("json"));
    let tampered = format!("{}.{forged}.{}", segments[0], segments[2]);
    assert!(refused(&orch, &tampered).await.contains("InvalidSignature"));
    // exp as a string, and exp missing.
    let exp_string = token(
        Algorithm::HS256,
        &with(claims(), json!({"exp": (now() + 600).to_string()})),
    );
    assert!(!refused(&orch, &exp_string).await.is_empty());
    let no_exp = token(Algorithm::HS256, &with(claims(), json!({"exp": null})));
    assert!(refused(&orch, &no_exp).await.contains("exp"));
    // Wrong shapes.
    let two = format!("{}.{}", segments[0], segments[1]);
    let four = format!("{good}.extra");
    for shape in [two.as_str(), four.as_str(), "", "garbage", "a.b.c", "...."] {
        assert!(!refused(&orch, shape).await.is_empty(), "{shape:?}");
    }
    // A valid token without a required scope.
    let out = call(
        &orch,
        "oauth_auth",
        json!({ "token": good, "required_scopes": ["admin", "tasks:submit"] }),
    )
    .await
    .expect("answered");
    assert_eq!(out["authenticated"], false);
    assert_eq!(out["reason"], "the token lacks required scope(s): admin");
}

#[tokio::test]
async fn an_algorithm_without_a_configured_key_is_not_allowed() {
    let dir = temp_dir("allow-list");
    let orch = orchestrator(json!({
        "jwt": {"rs256_public_key_pem": key("rsa_public.pem"), "audience": "orchestrator", "issuer": "https://issuer.example"},
        "audit": {"path": dir.join("audit.log")}
    }))
    .await
    .expect("builds");
    // With only the RSA key configured, the classic confusion attack is refused outright.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(key("rsa_public.pem").as_bytes()),
    )
    .expect("encodes");
    assert_eq!(
        refused(&orch, &confused).await,
        "algorithm HS256 is not allowed (allowed: RS256)"
    );
    let ok = call(
        &orch,
        "oauth_auth",
        json!({ "token": token(Algorithm::RS256, &claims()) }),
    )
    .await
    .expect("answered");
    assert_eq!(ok["authenticated"], true);
}

/// Regression guard for the verification cache: a token that verified once is still refused
/// once it expires.
#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let dir = temp_dir("cache");
    let orch = orchestrator(json!({
        "jwt": {"hs256_secret": SECRET, "leeway_s": 0},
        "audit": {"path": dir.join("audit.log")}
    }))
    .await
    .expect("builds");
    let short = token(Algorithm::HS256, &with(claims(), json!({"exp": now() + 1})));
    let first = call(&orch, "oauth_auth", json!({ "token": short }))
        .await
        .expect("answered");
    assert_eq!(first["authenticated"], true);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(refused(&orch, &short).await.contains("ExpiredSignature"));
}

#[tokio::test]
async fn rbac_decides_with_inheritance_and_says_which_rule() {
    let dir = temp_dir("rbac");
    let orch = orchestrator(config(&dir.join("audit.log"))).await.expect("builds");
    let ask = |subject: &'static str, resource: &'static str, action: &'static str| {
        let orch = orch.clone();
        async move {
            call(
                &orch,
                "rbac_enforcement",
                json!({"subject": subject, "resource": resource, "action": action}),
            )
            .await
            .expect("decides")
        }
    };
    assert_eq!(
        ask("alice", "agents", "restart").await["rule"],
        "role operator allows agents:*"
    );
    assert_eq!(ask("alice", "agents", "read").await["allowed"], true);
    let denied = ask("bob", "tasks", "submit").await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(
        denied["rule"],
        "deny by default: no role of [viewer] allows tasks:submit"
    );
    let by_role = call(
        &orch,
        "rbac_enforcement",
        json!({"roles": ["viewer"], "resource": "agents", "action": "read"}),
    )
    .await
    .expect("decides");
    assert_eq!(by_role["allowed"], true);
}

#[tokio::test]
async fn configuration_errors_name_what_is_wrong() {
    let cases = [
        (
            json!({"jwt": {"hs256_secret": SECRET, "colour": "blue"}}),
            "unknown field `colour`",
        ),
        (json!({"jwt": {"hs256_secret": "short"}}), "at least 16 bytes"),
        (
            json!({"jwt": {"rs256_public_key_pem": "not a pem"}}),
            "rs256_public_key_pem",
        ),
        (
            json!({"rbac": {"roles": {"a": {"inherits": ["b"]}, "b": {"inherits": ["a"]}}}}),
            "role inheritance cycle: a -> b -> a",
        ),
        (json!({"auditt": {}}), "unknown field `auditt`"),
        // Regression guard (found by the configuration property test): the message did not
        // say the permission was in `allow`.
        (
            json!({"rbac": {"roles": {"viewer": {"allow": ["x"]}}}}),
            "role `viewer`: permission \"x\" in `allow` is not `resource:action`",
        ),
    ];
    for (config, expected) in cases {
        let err = orchestrator(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{config}: {err}");
        assert!(err.to_string().contains("SecurityIntegrationPlugin"), "{err}");
    }
}

#[tokio::test]
async fn garbage_is_refused_as_invalid_request() {
    let dir = temp_dir("garbage");
    let orch = orchestrator(config(&dir.join("audit.log"))).await.expect("builds");
    let cases = [
        ("oauth_auth", json!({})),
        ("oauth_auth", json!({"token": 7})),
        ("oauth_auth", json!({"token": "x", "required_scopes": "admin"})),
        ("rbac_enforcement", json!({"subject": "alice"})),
        (
            "rbac_enforcement",
            json!({"roles": "operator", "resource": "a", "action": "b"}),
        ),
        ("rbac_enforcement", json!([1, 2])),
        ("audit_logging", json!({"op": "shred"})),
        ("audit_logging", json!({"agent_id": "a", "action": 3, "resource": "r"})),
        ("audit_logging", json!({"op": "query", "since": "yesterday"})),
        ("audit_logging", json!("text")),
    ];
    for (capability, data) in cases {
        let err = orch
            .execute(IntegrationRequest::new(capability, data.clone()))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid request"),
            "{capability} {data}: {err}"
        );
    }
}

#[tokio::test]
async fn the_audit_log_chains_verifies_and_queries() {
    let dir = temp_dir("audit");
    let path = dir.join("nested/audit.log");
    let orch = orchestrator(config(&path)).await.expect("builds");
    for (i, agent) in ["a1", "a2", "a1"].iter().enumerate() {
        let out = call(
            &orch,
            "audit_logging",
            json!({"agent_id": agent, "action": "run", "resource": format!("task-{i}"), "outcome": "ok"}),
        )
        .await
        .expect("appends");
        assert_eq!(out["sequence"], i);
        assert_eq!(out["hash"].as_str().map(str::len), Some(64));
    }
    let verified = call(&orch, "audit_logging", json!({"op": "verify"}))
        .await
        .expect("verifies");
    assert_eq!(
        (verified["valid"].as_bool(), verified["records"].as_u64()),
        (Some(true), Some(3)),
        "{verified}"
    );
    let a1 = call(&orch, "audit_logging", json!({"op": "query", "agent_id": "a1"}))
        .await
        .expect("queries");
    let resources: Vec<&str> = a1["records"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["resource"].as_str())
        .collect();
    assert_eq!(resources, ["task-0", "task-2"]);
    let future = call(
        &orch,
        "audit_logging",
        json!({"op": "query", "since": (now() + 3600) * 1000}),
    )
    .await
    .expect("queries");
    assert_eq!(future["records"], json!([]));
}

/// Writes three records with a fresh orchestrator and returns the log's path and bytes.
async fn three_records(name: &str) -> (PathBuf, Vec<u8>) {
    let path = temp_dir(name).join("audit.log");
    let orch = orchestrator(config(&path)).await.expect("builds");
    for i in 0..3 {
        call(
            &orch,
            "audit_logging",
            json!({"agent_id": "a", "action": "act", "resource": format!("r{i}")}),
        )
        .await
        .expect("appends");
    }
    let bytes = std::fs::read(&path).expect("log");
    (path, bytes)
}

/// Byte ranges of each frame.
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push(at..at + 8 + len);
        at += 8 + len;
    }
    out
}

async fn verify_file(path: &Path) -> Value {
    // A new orchestrator on the same file: what an auditor would run.
    let orch = orchestrator(config(path)).await.expect("builds");
    call(&orch, "audit_logging", json!({"op": "verify"}))
        .await
        .expect("verifies")
}

#[tokio::test]
async fn a_crash_mid_write_is_recovered_on_open() {
    let (path, bytes) = three_records("torn").await;
    std::fs::write(&path, &bytes[..bytes.len() - 7]).expect("simulate a torn write");
    let report = verify_file(&path).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["records"], 2);
    assert_eq!(report["recovered"]["kept_records"], 2);
    assert!(report["recovered"]["truncated_bytes"].as_u64() > Some(0));
}

#[tokio::test]
async fn every_kind_of_tampering_is_found_and_located() {
    let (path, bytes) = three_records("tamper").await;
    let f = frames(&bytes);

    // An edit with the checksum left alone: the frame is damaged.
    let mut edited = bytes.clone();
    let pos = f[1].start + 8 + 20;
    edited[pos] ^= 0x01;
    std::fs::write(&path, &edited).expect("write");
    let report = verify_file(&path).await;
    assert_eq!(
        (report["valid"].as_bool(), report["first_bad"].as_u64()),
        (Some(false), Some(1)),
        "{report}"
    );

    // An edit with a recomputed checksum: the hash no longer matches.
    let mut record: Value = serde_json::from_slice(&bytes[f[1].start + 8..f[1].end]).expect("record");
    record["resource"] = json!("r9");
    let body = serde_json::to_vec(&record).expect("json");
    let mut forged = bytes[..f[1].start].to_vec();
    forged.extend_from_slice(&(body.len() as u32).to_le_bytes());
    forged.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    forged.extend_from_slice(&body);
    forged.extend_from_slice(&bytes[f[2].clone()]);
    std::fs::write(&path, &forged).expect("write");
    let report = verify_file(&path).await;
    assert_eq!(report["first_bad"], 1, "{report}");
    assert!(
        report["reason"].as_str().unwrap_or_default().contains("edited"),
        "{report}"
    );

    // A deletion in the middle.
    let mut deleted = bytes[f[0].clone()].to_vec();
    deleted.extend_from_slice(&bytes[f[2].clone()]);
    std::fs::write(&path, &deleted).expect("write");
    let report = verify_file(&path).await;
    assert_eq!(report["first_bad"], 1, "{report}");

    // Two records swapped.
    let mut swapped = bytes[f[0].clone()].to_vec();
    swapped.extend_from_slice(&bytes[f[2].clone()]);
    swapped.extend_from_slice(&bytes[f[1].clone()]);
    std::fs::write(&path, &swapped).expect("write");
    let report = verify_file(&path).await;
    assert_eq!(report["first_bad"], 1, "{report}");

    // A record inserted (a copy of the first).
    let mut inserted = bytes[f[0].clone()].to_vec();
    inserted.extend_from_slice(&bytes[f[0].clone()]);
    inserted.extend_from_slice(&bytes[f[1].start..]);
    std::fs::write(&path, &inserted).expect("write");
    let report = verify_file(&path).await;
    assert_eq!(report["first_bad"], 1, "{report}");

    // The end cut off by the process that wrote it: it remembers its head.
    std::fs::write(&path, &bytes).expect("restore");
    let orch = orchestrator(config(&path)).await.expect("builds");
    call(
        &orch,
        "audit_logging",
        json!({"agent_id": "a", "action": "act", "resource": "r3"}),
    )
    .await
    .expect("appends");
    let now_bytes = std::fs::read(&path).expect("log");
    let last = frames(&now_bytes).pop().expect("frames");
    std::fs::write(&path, &now_bytes[..last.start]).expect("cut");
    let report = call(&orch, "audit_logging", json!({"op": "verify"}))
        .await
        .expect("verifies");
    assert_eq!(report["valid"], false);
    assert!(
        report["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("removed from the end"),
        "{report}"
    );
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    let dir = temp_dir("kit");
    let report = check_plugin(
        &SecurityIntegrationPlugin::default(),
        CheckOptions::default().with_config(config(&dir.join("audit.log"))),
    )
    .await;
    report.assert_conformant();
}
