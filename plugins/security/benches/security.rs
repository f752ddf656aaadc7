//! The security path a request takes: JWT verification plus an RBAC decision, through the
//! orchestrator, for each algorithm, beside the signature check alone (the crypto backend's
//! floor for a first use); and the RBAC decision alone against a naive linear scan of the same
//! 1,000 rules, in one group.
//!
//! Run it with `cargo bench -p plugin-security`.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use orchestrator_core::Orchestrator;
use plugin_api::IntegrationRequest;
use plugin_security::SecurityIntegrationPlugin;
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;

const SECRET: &str = "a-bench-secret-of-32-bytes-length";

fn key(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)).expect("test key")
}

/// 1,000 roles `role-i`, each allowing `resource-i:read`; alice has the last one.
fn roles() -> Value {
    let roles: serde_json::Map<String, Value> = (0..1000)
        .map(|i| (format!("role-{i}"), json!({"allow": [format!("resource-{i}:read")]})))
        .collect();
    json!({"roles": roles, "subjects": {"alice": ["role-999"]}})
}

/// What a first version would write: every (role, permission) pair in a list, scanned.
fn naive_allowed(rules: &[(String, String)], roles: &[&str], resource: &str, action: &str) -> bool {
    rules.iter().any(|(role, permission)| {
        roles.contains(&role.as_str())
            && permission
                .split_once(':')
                .is_some_and(|(r, a)| (r == "*" || r == resource) && (a == "*" || a == action))
    })
}

fn bench_security(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let audit = std::env::temp_dir().join(format!("orch-bench-audit-{}.log", std::process::id()));
    let orch = rt
        .block_on(
            Orchestrator::builder()
                .plugin(SecurityIntegrationPlugin::default())
                .configure(
                    "SecurityIntegrationPlugin",
                    json!({
                        "jwt": {
                            "hs256_secret": SECRET,
                            "rs256_public_key_pem": key("rsa_public.pem"),
                            "es256_public_key_pem": key("ec_public.pem"),
                            "audience": "orchestrator",
                        },
                        "rbac": roles(),
                        "audit": {"path": audit},
                    }),
                )
                .build(),
        )
        .expect("builds");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = json!({"sub": "alice", "aud": "orchestrator", "exp": exp, "scope": "tasks:submit"});
    let keys = [
        (Algorithm::HS256, EncodingKey::from_secret(SECRET.as_bytes())),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(key("rsa_private.pem").as_bytes()).expect("key"),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(key("ec_private.pem").as_bytes()).expect("key"),
        ),
    ];
    let tokens: Vec<(Algorithm, String)> = keys
        .iter()
        .map(|(alg, k)| (*alg, encode(&Header::new(*alg), &claims, k).expect("encodes")))
        .collect();
    let rbac = IntegrationRequest::new(
        "rbac_enforcement",
        json!({"subject": "alice", "resource": "resource-999", "action": "read"}),
    );

    let mut group = c.benchmark_group("jwt_verify_plus_rbac");
    group.sample_size(20);
    // A token seen for the first time: signature check and claims (each iteration signs a new
    // token outside the timing, with a distinct `jti`).
    // The counter lives outside the closure criterion calls once per sample, so that no token
    // repeats across samples (a repeat would be a cache hit).
    let counter = std::sync::atomic::AtomicU64::new(0);
    for (alg, signing_key) in &keys {
        group.bench_function(format!("{alg:?}_first_use"), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let fresh =
                        json!({"sub": "alice", "aud": "orchestrator", "exp": exp, "scope": "tasks:submit", "jti": n});
                    let token = encode(&Header::new(*alg), &fresh, signing_key).expect("encodes");
                    IntegrationRequest::new(
                        "oauth_auth",
                        json!({"token": token, "required_scopes": ["tasks:submit"]}),
                    )
                },
                |auth| {
                    let (orch, rbac) = (orch.clone(), rbac.clone());
                    async move {
                        let who = orch.execute(auth).await.expect("verifies");
                        assert_eq!(who.data["authenticated"], true);
                        black_box(orch.execute(rbac).await.expect("decides"))
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    // The floor: the signature check alone, by jsonwebtoken's crypto backend, on the same
    // tokens (no parsing, claims, cache or dispatch). First use cannot go below it.
    let decoding = |alg: Algorithm| match alg {
        Algorithm::HS256 => DecodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(key("rsa_public.pem").as_bytes()).expect("key"),
        _ => DecodingKey::from_ec_pem(key("ec_public.pem").as_bytes()).expect("key"),
    };
    for (alg, token) in &tokens {
        let (message, signature) = token.rsplit_once('.').expect("a JWT");
        let decoding_key = decoding(*alg);
        group.bench_function(format!("{alg:?}_signature_only"), |b| {
            b.iter(|| {
                let valid = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &decoding_key, *alg);
                assert!(matches!(valid, Ok(true)));
            });
        });
    }
    // The same token again (a client's next request): served from the verification cache.
    for (alg, token) in &tokens {
        let auth = IntegrationRequest::new(
            "oauth_auth",
            json!({"token": token, "required_scopes": ["tasks:submit"]}),
        );
        group.bench_function(format!("{alg:?}_repeat"), |b| {
            b.to_async(&rt).iter(|| {
                let (orch, auth, rbac) = (orch.clone(), auth.clone(), rbac.clone());
                async move {
                    let who = orch.execute(auth).await.expect("verifies");
                    assert_eq!(who.data["authenticated"], true);
                    black_box(orch.execute(rbac).await.expect("decides"))
                }
            });
        });
    }
    group.finish();

    let rules: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("role-{i}"), format!("resource-{i}:read")))
        .collect();
    let mut group = c.benchmark_group("rbac_1000_rules");
    group.bench_function("naive_linear_scan", |b| {
        b.iter(|| black_box(naive_allowed(&rules, &["role-999"], "resource-999", "read")));
    });
    group.bench_function("plugin_via_execute", |b| {
        b.to_async(&rt).iter(|| orch.execute(rbac.clone()));
    });
    group.finish();
    std::fs::remove_file(&audit).ok();
}

criterion_group!(benches, bench_security);
criterion_main!(benches);
