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
    durable: bool,
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
    /// A fresh server keeping nothing on disk, or `None` (with a message) when there is no
    /// `redis-server` outside CI.
    pub(crate) fn start() -> Option<Self> {
        Self::launch(false)
    }

    /// A fresh server that syncs every write to its append-only file before answering
    /// (`appendfsync always`), so that a SIGKILL loses nothing it acknowledged.
    pub(crate) fn start_durable() -> Option<Self> {
        Self::launch(true)
    }

    fn launch(durable: bool) -> Option<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("orch-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            durable,
        };
        server.spawn().then_some(server)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and directory.
    pub(crate) fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server restarts");
    }

    fn spawn(&mut self) -> bool {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let persistence: &[&str] = if self.durable {
            &["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let spawned = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.child = Some(child),
            Err(e) if !in_ci() => {
                eprintln!("SKIPPED: cannot start `{binary}` ({e}); install redis-server to run the Redis tests");
                return false;
            }
            Err(e) => panic!("CI=true and `{binary}` cannot start: {e}"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within 10 s", self.port);
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
        raw_command(self.port, args)
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

/// Sends one command to the Redis on `port` over raw RESP and returns the reply's text: for
/// writing behind the store's back (foreign data, blind writes) and for inspecting what it wrote.
pub(crate) fn raw_command(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
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

/// The port of a `redis://127.0.0.1:PORT` URL.
pub(crate) fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a redis://host:port URL")
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test leaves none
/// behind.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One raw RESP connection for commands with a one-line reply (`:n`, `+OK`, `-ERR ...`), fast
/// enough to use in a loop.
pub(crate) struct RawConnection(std::net::TcpStream);

impl RawConnection {
    pub(crate) fn open(port: u16) -> Self {
        Self(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects"))
    }

    /// Sends `args`, returns the one-line reply without its `\r\n`.
    pub(crate) fn simple(&mut self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.write_all(request.as_bytes()).expect("writes");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            self.0.read_exact(&mut byte).expect("reads a reply");
            reply.push(byte[0]);
        }
        reply.truncate(reply.len() - 2);
        String::from_utf8_lossy(&reply).into_owned()
    }
}
