//! A real `redis-server` for the tests: started on a free loopback port, stopped on drop.
//!
//! When `redis-server` is missing the Redis tests say so and return early, unless `CI=true`,
//! where they fail: CI installs Redis, so a missing server there is a broken machine, never a
//! reason to skip.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl RedisServer {
    /// A fresh server, or `None` (with a message) when there is no `redis-server` outside CI.
    pub(crate) fn start() -> Option<Self> {
        Self::start_on(free_port())
    }

    /// A server on `port` (to restart one where clients expect it).
    pub(crate) fn start_on(port: u16) -> Option<Self> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let dir = std::env::temp_dir().join(format!("orch-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let spawned = Command::new(&binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if !in_ci() => {
                eprintln!("SKIPPED: cannot start `{binary}` ({e}); install redis-server to run the Redis tests");
                return None;
            }
            Err(e) => panic!("CI=true and `{binary}` cannot start: {e}"),
        };
        let server = RedisServer {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer PING within 10 s");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server answers a PING, checked with a raw socket.
    pub(crate) fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Runs a command over raw RESP (no redis-cli needed), returning the reply's text.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes()).expect("writes");
        // Read until the server goes quiet: enough for the small replies the tests inspect.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Stops the server (SIGKILL) and waits for it to go.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
