//! Shared end-to-end harness: runs the real gateway example as a child
//! process and talks to it over real sockets.
//!
//! ```ignore
//! mod common;
//! use common::Gateway;
//!
//! #[tokio::test]
//! async fn proxies() {
//!     let gw = Gateway::start(&[]);                      // demo upstream inside
//!     let reply = common::get(&gw.url("/items/1")).await;
//!     assert_eq!(reply.status, 200);
//! }
//! ```
//!
//! `Gateway::start_with_config(args, toml)` writes the TOML to a temporary
//! file and passes `--config`. `--listen 127.0.0.1:0` is added unless the
//! arguments carry `--listen`. The process is killed when the `Gateway` is
//! dropped; `sigterm` + `wait_exit` test a graceful stop.

// Each test crate uses a different subset of this module.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a gateway may take to print its listening line or to exit. Only
/// bounds a broken run; no assertion depends on it.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A running gateway process.
#[derive(Debug)]
pub struct Gateway {
    pid: u32,
    /// The address from the `listening on http://ADDR` line.
    pub addr: SocketAddr,
    /// The embedded demo upstream's address, when it runs.
    pub upstream_addr: Option<SocketAddr>,
    output: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    exited: mpsc::Receiver<ExitStatus>,
    config_file: Option<PathBuf>,
    status: Option<ExitStatus>,
}

/// A process that ran to completion (a start-up failure).
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub output: String,
}

/// Starts the gateway with the config file `toml` and asserts it is refused
/// the way docs/gateway.md promises: exit code 2, a message containing
/// `needle` (the key, and its line where the parser gives one), and no port
/// bound (no listening line).
pub fn assert_config_rejected(toml: &str, needle: &str) {
    let finished = Gateway::expect_exit(&[], Some(toml));
    assert_eq!(finished.status.code(), Some(2), "{}", finished.output);
    assert!(finished.output.contains(needle), "{}", finished.output);
    assert!(
        !finished.output.contains("listening on"),
        "{}",
        finished.output
    );
}

impl Gateway {
    /// Starts the gateway with `args` and waits for its listening line.
    /// Panics (with the process output) if it exits instead.
    pub fn start(args: &[&str]) -> Gateway {
        Self::spawn(args, None)
            .unwrap_or_else(|f| panic!("gateway exited with {}:\n{}", f.status, f.output))
    }

    /// Like [`Gateway::start`] with `toml` as `--config`.
    pub fn start_with_config(args: &[&str], toml: &str) -> Gateway {
        Self::spawn(args, Some(toml))
            .unwrap_or_else(|f| panic!("gateway exited with {}:\n{}", f.status, f.output))
    }

    /// Runs the gateway expecting it to exit before listening (a bad
    /// configuration); panics if it starts listening.
    pub fn expect_exit(args: &[&str], toml: Option<&str>) -> Finished {
        match Self::spawn(args, toml) {
            Ok(gw) => panic!("gateway started listening on {}:\n{}", gw.addr, gw.output()),
            Err(finished) => finished,
        }
    }

    /// Starts the gateway; `Err` when the process exits before listening.
    pub fn spawn(args: &[&str], toml: Option<&str>) -> Result<Gateway, Finished> {
        Self::spawn_example("gateway", args, toml)
    }

    /// Starts another example of this package (e.g. `axum`) that prints the
    /// same `listening on http://ADDR` line and accepts `--listen`.
    pub fn start_example(name: &str, args: &[&str]) -> Gateway {
        Self::spawn_example(name, args, None)
            .unwrap_or_else(|f| panic!("{name} exited with {}:\n{}", f.status, f.output))
    }

    /// Starts example `name`; `Err` when it exits before listening.
    pub fn spawn_example(
        name: &str,
        args: &[&str],
        toml: Option<&str>,
    ) -> Result<Gateway, Finished> {
        let config_file = toml.map(write_temp_config);
        let mut cmd = Command::new(example_binary(name));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        if let Some(path) = &config_file {
            cmd.arg("--config").arg(path);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway binary");

        let output = Arc::new(Mutex::new(String::new()));
        let (line_tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for stream in [out, err] {
            let output = output.clone();
            let tx = line_tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut o = output.lock().unwrap();
                        o.push_str(&line);
                        o.push('\n');
                    }
                    let _ = tx.send(line);
                }
            }));
        }
        drop(line_tx);

        // A waiter thread owns the child and reports its exit status.
        let pid = child.id();
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait().expect("wait for the gateway");
            for r in readers {
                let _ = r.join();
            }
            let _ = exit_tx.send(status);
        });

        // `--demo-upstream-only` prints only the demo upstream's line; that
        // address is then the process's address.
        let upstream_only = args.contains(&"--demo-upstream-only");
        let mut upstream_addr = None;
        let addr = loop {
            match lines.recv_timeout(PROCESS_TIMEOUT) {
                Ok(line) => {
                    if let Some(a) = parse_listening(&line, "demo upstream listening on http://") {
                        upstream_addr = Some(a);
                        if upstream_only {
                            break a;
                        }
                    } else if let Some(a) = parse_listening(&line, "listening on http://") {
                        break a;
                    }
                }
                Err(_) => {
                    // Pipes closed (exited) or timed out: report what we have.
                    let status = match exited.recv_timeout(PROCESS_TIMEOUT) {
                        Ok(status) => status,
                        Err(_) => {
                            signal(pid, "KILL");
                            exited.recv().expect("exit status of the killed gateway")
                        }
                    };
                    if let Some(path) = &config_file {
                        let _ = std::fs::remove_file(path);
                    }
                    let output = output.lock().unwrap().clone();
                    return Err(Finished { status, output });
                }
            }
        };
        Ok(Gateway {
            pid,
            addr,
            upstream_addr,
            output,
            lines,
            exited,
            config_file,
            status: None,
        })
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process has written so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` appears (or was seen already).
    pub fn wait_for_line(&self, needle: &str) -> String {
        if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        loop {
            match self.lines.recv_timeout(PROCESS_TIMEOUT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} in:\n{}", self.output()),
            }
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        signal(self.pid(), "INT");
    }

    /// Sends SIGHUP (the gateway reloads `--config`).
    pub fn sighup(&self) {
        signal(self.pid(), "HUP");
    }

    /// Replaces the contents of the `--config` file written by
    /// [`Gateway::start_with_config`] (then [`Gateway::sighup`] to reload).
    pub fn rewrite_config(&self, toml: &str) {
        let path = self
            .config_file
            .as_ref()
            .expect("the gateway was started with a config file");
        // Written beside and renamed over, so a reload never reads half a file.
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, toml).expect("write the new config");
        std::fs::rename(&tmp, path).expect("replace the config");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self
            .exited
            .recv_timeout(PROCESS_TIMEOUT)
            .unwrap_or_else(|_| panic!("gateway did not exit; output:\n{}", self.output()));
        self.status = Some(status);
        status
    }

    /// Peak resident memory (`VmHWM`) of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (`VmRSS`) of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Not reaped yet (the waiter still holds the status), so the pid
            // is still ours.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
            let _ = self.exited.recv_timeout(PROCESS_TIMEOUT);
        }
        if let Some(path) = &self.config_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The socket address that follows `prefix` in a log `line` (a start-up
/// line such as `listening on http://ADDR`).
pub fn parse_listening(line: &str, prefix: &str) -> Option<SocketAddr> {
    let start = line.find(prefix)? + prefix.len();
    // In "listening on http://..." make sure we did not match the tail of
    // "demo upstream listening on http://...".
    if prefix == "listening on http://" && line[..start - prefix.len()].ends_with("demo upstream ")
    {
        return None;
    }
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

// === building the binary ===

/// Path of the gateway example next to this test executable
/// (`target/<profile>/examples/gateway`); see [`example_binary`].
pub fn gateway_binary() -> PathBuf {
    example_binary("gateway")
}

/// Path of example `name` next to this test executable
/// (`target/<profile>/examples/<name>`). The first call per example in a test
/// process runs `cargo build --example <name>` for the same profile, so a
/// test run that did not build examples (`cargo test --test gateway`) never
/// uses a stale binary; it is a no-op check when the binary is current. Set
/// `PALISADE_GATEWAY_BIN` to use a given gateway binary instead.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    if name == "gateway"
        && let Some(bin) = std::env::var_os("PALISADE_GATEWAY_BIN")
    {
        return PathBuf::from(bin);
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, bin)) = built.iter().find(|(n, _)| n == name) {
        return bin.clone();
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    build_example(profile_dir, name);
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} missing after building it", bin.display());
    built.push((name.to_owned(), bin.clone()));
    bin
}

fn build_example(profile_dir: &Path, name: &str) {
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir name");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--all-features", "--example", name])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
}

fn write_temp_config(toml: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "palisade-gateway-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, toml).expect("write temp config");
    path
}

// === HTTP helpers ===

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    /// Asserts the answer is the project's "try again shortly" refusal: 503,
    /// `Retry-After: 1` (the one Retry-After rule: whole seconds, rounded
    /// up, at least 1) and `body`.
    pub fn assert_unavailable(&self, body: &str) {
        assert_eq!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{:?}",
            self.text()
        );
        assert_eq!(self.header("retry-after"), "1");
        assert_eq!(self.text(), body);
    }

    /// A header as text (panics if missing).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}: {:?}", self.headers))
            .to_str()
            .expect("ASCII header")
    }
}

/// An HTTP/1.1 client with a keep-alive pool.
pub fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` (any body) with a fresh HTTP/1.1 client and reads the reply.
pub async fn send<B>(req: Request<B>) -> Reply
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let res = client().request(req).await.expect("request to the gateway");
    read(res).await
}

/// Reads a response to the end.
pub async fn read(res: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("read response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    send(Request::get(url).body(Full::<Bytes>::default()).unwrap()).await
}

/// The statuses of `n` sequential `GET url`s, and how many were `200`.
pub async fn statuses(url: &str, n: usize) -> (Vec<StatusCode>, usize) {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(get(url).await.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    (statuses, ok)
}

/// `method url` with `body`.
pub async fn request(method: &str, url: &str, body: impl Into<Bytes>) -> Reply {
    send(
        Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body.into()))
            .unwrap(),
    )
    .await
}

/// Writes `raw` bytes on a new TCP connection and reads until the peer
/// closes (send `Connection: close`). For requests a client library would
/// normalize.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write request");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read response");
    String::from_utf8(out).expect("UTF-8 response")
}

/// The value of the Prometheus sample `name{labels}` (labels exactly as
/// rendered, e.g. `route="proxy",status="200"`; empty for none), or 0 when
/// absent (a counter never incremented is not rendered).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == key).then(|| v.parse::<f64>().expect("numeric sample"))
        })
        .unwrap_or(0.0)
}

/// Scrapes `/metrics`.
pub async fn scrape(gw: &Gateway) -> String {
    let reply = get(&gw.url("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// Scrapes `/metrics` until the sample `name{labels}` equals `value`.
/// Bounded so a broken gateway fails the test with the last scrape instead
/// of hanging it; each round yields, so the wait is event-driven, not timed.
pub async fn wait_for_metric(gw: &Gateway, name: &str, labels: &str, value: f64) {
    let mut last = String::new();
    for _ in 0..20_000 {
        last = scrape(gw).await;
        if metric(&last, name, labels) == value {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{name}{{{labels}}} never reached {value}; last scrape:\n{last}");
}

/// Calls the breaker of upstream `index` recorded as failures, from a
/// `/metrics` scrape.
pub fn breaker_failures(text: &str, index: usize) -> f64 {
    let breaker = format!("upstream/{index}");
    metric_with(
        text,
        "palisade_breaker_calls_total",
        &[("breaker", &breaker), ("outcome", "failure")],
    )
}

/// Label order of a rendered sample is not guaranteed; this finds a sample
/// of `name` having every `k="v"` pair in `labels`, in any order.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let rest = k.strip_prefix(name)?;
            let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
            let pairs: Vec<&str> = inner.split(',').collect();
            let all = labels.len() == pairs.len()
                && labels
                    .iter()
                    .all(|(lk, lv)| pairs.contains(&format!("{lk}=\"{lv}\"").as_str()));
            all.then(|| v.parse::<f64>().expect("numeric sample"))
        })
        .unwrap_or(0.0)
}

// === a recording upstream ===

/// An HTTP/1.1 upstream that answers every request `200 ok` (keep-alive)
/// and records each request head it receives, so a test can assert what
/// the gateway forwarded and what it never did. Bodies are not read: use
/// it for requests without one.
#[derive(Debug, Clone)]
pub struct RecordingUpstream {
    /// Where it listens (`--upstream http://ADDR`).
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingUpstream {
    /// Binds an ephemeral port and serves on the current runtime.
    pub async fn start() -> RecordingUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recording upstream");
        let addr = listener.local_addr().expect("its address");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            recorded.lock().unwrap().push(head);
                            let res = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                            if s.write_all(res).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        RecordingUpstream { addr, heads }
    }

    /// `http://ADDR`, for `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request heads received so far (without the final blank line).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The request lines received so far (`GET /x HTTP/1.1`).
    pub fn request_lines(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }
}
