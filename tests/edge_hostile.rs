//! The gateway's edge under hostile input (issue 23): request smuggling,
//! malformed heads and oversized ones (the cases of `common/hostile.rs`),
//! each sent as raw bytes to the real gateway in front of an upstream that
//! records, body and all, what reaches it; a body that breaks after its
//! head was forwarded; then a fuzz run of mutated heads against three
//! invariants (answered or closed in time, the gateway alive and serving,
//! never more requests upstream than answers from it). Every wait is
//! bounded.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Gateway;
use hostile::{Case, Forwarded, Framing};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bounds every single wait of the case suite; no assertion depends on it.
const BOUND: Duration = Duration::from_secs(20);

// === an upstream that records whole requests ===

/// One request as the upstream read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    /// Request line and fields, `\r\n`-separated, without the blank line.
    head: String,
    framing: Framing,
    /// The body, its framing decoded.
    body: Vec<u8>,
    /// The whole body arrived (else the connection ended mid-request).
    complete: bool,
    /// Why the upstream could not frame the request, if it could not: a
    /// forwarded head that is ambiguous is a smuggling hazard in itself.
    problem: Option<String>,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// The request target (the request line's second word).
    fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or_default()
    }

    /// The values of the fields named `name` (lower-case), in order.
    fn values(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// How this record differs from `want`; `None` when it matches.
    fn mismatch(&self, want: &Forwarded) -> Option<String> {
        let mut diffs = Vec::new();
        if let Some(problem) = &self.problem {
            diffs.push(format!("unframeable: {problem}"));
        }
        if self.request_line() != want.request_line {
            diffs.push(format!("request line {:?}", self.request_line()));
        }
        if self.framing != want.framing {
            diffs.push(format!("framing {:?}", self.framing));
        }
        if self.body != want.body {
            diffs.push(format!("body {:?}", String::from_utf8_lossy(&self.body)));
        }
        if !self.complete {
            diffs.push("the body never completed".to_owned());
        }
        for (name, value) in want.fields {
            let got = self.values(name);
            if got != [*value] {
                diffs.push(format!("{name}: {got:?}"));
            }
        }
        (!diffs.is_empty()).then(|| format!("{} (head {:?})", diffs.join(", "), self.head))
    }
}

/// An HTTP/1.1 upstream that reads each request's body by its framing
/// (`Content-Length` or chunked) before answering `200 ok` with
/// `x-recorded: 1`, and records every request: so a body smuggled past
/// the gateway shows up as a request of its own, and the client can count
/// the answers that came from here.
#[derive(Debug, Clone)]
struct BodyRecorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// How many records there are, to wait for one without polling.
    count: watch::Receiver<usize>,
    /// How many request heads have arrived, bodies complete or not.
    heads: watch::Receiver<usize>,
}

/// The recorder's answer to a request for `target`: `x-recorded` marks it
/// as the upstream's, `x-target` says which request it answers. No body
/// for a `HEAD`.
fn recorded(target: &str, head: bool) -> Vec<u8> {
    // Only visible ASCII goes back into a field value.
    let target = if target.bytes().all(|b| b.is_ascii_graphic()) {
        target
    } else {
        "-"
    };
    let mut res = format!(
        "HTTP/1.1 200 OK\r\nx-recorded: 1\r\nx-target: {target}\r\ncontent-length: 3\r\n\r\n"
    )
    .into_bytes();
    if !head {
        res.extend_from_slice(b"ok\n");
    }
    res
}

impl BodyRecorder {
    async fn start() -> BodyRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let (heads_tx, heads) = watch::channel(0);
        let heads_tx = Arc::new(heads_tx);
        let record = {
            let received = received.clone();
            move |r: Received| {
                let mut all = received.lock().unwrap();
                all.push(r);
                count_tx.send_replace(all.len());
            }
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let heads_tx = heads_tx.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let Some(request) = read_request(&mut stream, &heads_tx).await else {
                            return;
                        };
                        let answer = request.complete && request.problem.is_none();
                        let res = recorded(
                            request.target(),
                            request.request_line().starts_with("HEAD "),
                        );
                        record(request);
                        if !answer {
                            return;
                        }
                        if stream.get_mut().write_all(&res).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        BodyRecorder {
            addr,
            received,
            count,
            heads,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Whole requests (the body complete and framed) received so far.
    fn complete(&self) -> usize {
        let all = self.received.lock().unwrap();
        all.iter()
            .filter(|r| r.complete && r.problem.is_none())
            .count()
    }

    /// Waits until at least `n` requests have been recorded; false after
    /// `bound`.
    async fn wait_for(&self, n: usize, bound: Duration) -> bool {
        let mut count = self.count.clone();
        tokio::time::timeout(bound, count.wait_for(|c| *c >= n))
            .await
            .is_ok()
    }

    /// Waits until at least `n` request heads have arrived; false after
    /// `bound`.
    async fn wait_for_heads(&self, n: usize, bound: Duration) -> bool {
        let mut heads = self.heads.clone();
        tokio::time::timeout(bound, heads.wait_for(|h| *h >= n))
            .await
            .is_ok()
    }
}

/// Reads one request, counting its head in `heads` once it is in; `None`
/// at a clean end of stream before a request.
async fn read_request(
    stream: &mut BufReader<TcpStream>,
    heads: &watch::Sender<usize>,
) -> Option<Received> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        match stream.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) if head.is_empty() => return None,
            Ok(0) | Err(_) => {
                return Some(unframed(head, "end of stream inside the head"));
            }
            Ok(_) => {}
        }
        if line == b"\r\n" {
            break;
        }
        head.extend_from_slice(&line);
    }
    heads.send_modify(|n| *n += 1);
    let head = String::from_utf8_lossy(&head).trim_end().to_owned();
    let mut received = Received {
        head,
        framing: Framing::None,
        body: Vec::new(),
        complete: false,
        problem: None,
    };
    let te = received.values("transfer-encoding");
    let cl = received.values("content-length");
    received.framing = match (te.as_slice(), cl.as_slice()) {
        ([], []) => Framing::None,
        ([], [len]) => match len.parse() {
            Ok(len) => Framing::Length(len),
            Err(_) => return Some(problem(received, "invalid Content-Length")),
        },
        (["chunked"], []) => Framing::Chunked,
        _ => return Some(problem(received, "ambiguous framing")),
    };
    received.complete = match received.framing {
        Framing::None => true,
        Framing::Length(len) => {
            let mut body = vec![0; usize::try_from(len).unwrap()];
            let whole = stream.read_exact(&mut body).await.is_ok();
            if whole {
                received.body = body;
            }
            whole
        }
        Framing::Chunked => read_chunked(stream, &mut received.body).await,
    };
    Some(received)
}

/// Decodes a chunked body into `body`; false when the stream ends or the
/// coding is broken first.
async fn read_chunked(stream: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> bool {
    loop {
        let mut line = String::new();
        if !matches!(stream.read_line(&mut line).await, Ok(n) if n > 0) {
            return false;
        }
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return false;
        };
        if size == 0 {
            // Trailer fields, then the blank line.
            loop {
                let mut line = String::new();
                if !matches!(stream.read_line(&mut line).await, Ok(n) if n > 0) {
                    return false;
                }
                if line == "\r\n" {
                    return true;
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        let mut crlf = [0u8; 2];
        if stream.read_exact(&mut body[start..]).await.is_err()
            || stream.read_exact(&mut crlf).await.is_err()
            || crlf != *b"\r\n"
        {
            return false;
        }
    }
}

fn unframed(head: Vec<u8>, why: &str) -> Received {
    problem(
        Received {
            head: String::from_utf8_lossy(&head).into_owned(),
            framing: Framing::None,
            body: Vec::new(),
            complete: false,
            problem: None,
        },
        why,
    )
}

fn problem(mut received: Received, why: &str) -> Received {
    received.problem = Some(why.to_owned());
    received
}

// === a raw client ===

use hostile::End;

/// [`hostile::exchange`]; a failed connect fails the test.
async fn exchange(addr: SocketAddr, raw: Vec<u8>, bound: Duration) -> (Vec<u8>, End) {
    hostile::exchange(addr, raw, bound).await.expect("connect")
}

/// The status line of each response.
fn status_lines(responses: &[hostile::Response]) -> Vec<&str> {
    responses.iter().map(|r| r.status_line.as_str()).collect()
}

// === the cases ===

/// What went wrong with one case; empty when it behaved.
async fn check(gw: &Gateway, upstream: &BodyRecorder, case: &Case) -> Vec<String> {
    let mut wrong = Vec::new();
    let before = upstream.len();
    let (out, end) = exchange(gw.addr, case.raw.clone(), BOUND).await;
    let (responses, rest) = hostile::responses(&out);
    let statuses = status_lines(&responses);
    // The upstream's answers reached the client, each for its own request,
    // in order.
    let answered: Vec<&str> = responses
        .iter()
        .flat_map(|r| r.values("x-target"))
        .collect();
    let want_answered: Vec<&str> = case
        .upstream
        .iter()
        .map(|f| f.request_line.split(' ').nth(1).unwrap_or_default())
        .collect();
    if answered != want_answered {
        wrong.push(format!("answers for {answered:?}, want {want_answered:?}"));
    }
    if end == End::TimedOut {
        wrong.push(format!("not closed within {BOUND:?}"));
    }
    if statuses != case.statuses {
        wrong.push(format!(
            "client read {statuses:?}, want {:?} ({end:?}; {:?})",
            case.statuses,
            String::from_utf8_lossy(&out)
        ));
    }
    if !rest.is_empty() {
        let rest = String::from_utf8_lossy(rest);
        wrong.push(format!("bytes after the last response: {rest:?}"));
    }
    // A forwarded request is recorded before it is answered: the wait ends
    // at once unless an expected request never came.
    let want = before + case.upstream.len();
    if !upstream.wait_for(want, BOUND).await {
        wrong.push(format!(
            "the upstream never got {} request(s)",
            case.upstream.len()
        ));
    }
    let received = upstream.received();
    let got = &received[before.min(received.len())..];
    if got.len() != case.upstream.len() {
        wrong.push(format!(
            "upstream got {:?}, want {:?}",
            got.iter().map(Received::request_line).collect::<Vec<_>>(),
            case.upstream
                .iter()
                .map(|f| f.request_line)
                .collect::<Vec<_>>()
        ));
    }
    for (got, want) in got.iter().zip(&case.upstream) {
        if let Some(diff) = got.mismatch(want) {
            wrong.push(format!("upstream {}: {diff}", want.request_line));
        }
    }
    wrong
}

#[tokio::test]
async fn hostile_requests_are_refused_or_reframed_and_never_smuggled() {
    let upstream = BodyRecorder::start().await;
    let gw = Gateway::start(&["--no-access-log", "--upstream", &upstream.url()]);
    let cases = hostile::cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let mut failures = Vec::new();
    for case in &cases {
        for wrong in check(&gw, &upstream, case).await {
            failures.push(format!("{}: {wrong}", case.name));
        }
    }
    // One ordinary request last: a smuggled request queued behind any of
    // the cases would sit in the record before it.
    let last = hostile::Case {
        name: "last",
        attack: "",
        raw: b"GET /?last HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec(),
        statuses: &[hostile::OK],
        upstream: vec![Forwarded::get("GET /?last HTTP/1.1")],
    };
    for wrong in check(&gw, &upstream, &last).await {
        failures.push(format!("last: {wrong}"));
    }
    let want: Vec<&str> = cases
        .iter()
        .chain([&last])
        .flat_map(|c| c.upstream.iter().map(|f| f.request_line))
        .collect();
    let received = upstream.received();
    let got: Vec<&str> = received.iter().map(Received::request_line).collect();
    if got != want {
        failures.push(format!("the whole record: {got:?}, want {want:?}"));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_body_that_breaks_after_its_head_was_forwarded_never_completes_upstream() {
    let upstream = BodyRecorder::start().await;
    let gw = Gateway::start(&["--no-access-log", "--upstream", &upstream.url()]);
    // The gateway streams a body: the head and the first chunk go upstream
    // before the rest exists.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /?late-overflow HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n",
    )
    .await
    .unwrap();
    assert!(upstream.wait_for_heads(1, BOUND).await, "head forwarded");
    // Then a chunk size that overflows: the client is answered 400, the
    // upstream connection is cut mid-body.
    s.write_all(b"ffffffffffffffffff1\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read the answer");
    let (responses, rest) = hostile::responses(&out);
    assert_eq!(status_lines(&responses), [hostile::BAD_REQUEST], "{out:?}");
    assert!(out.ends_with(b"\r\n\r\nrequest body aborted\n"), "{out:?}");
    assert!(rest.is_empty(), "{out:?}");

    assert!(
        upstream.wait_for(1, BOUND).await,
        "the cut request recorded"
    );
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let cut = &received[0];
    assert_eq!(cut.request_line(), "POST /?late-overflow HTTP/1.1");
    assert_eq!(cut.framing, Framing::Chunked);
    assert_eq!(cut.body, b"hello");
    assert!(!cut.complete, "{cut:?}");
    assert_eq!(cut.problem, None);
    assert_eq!(upstream.complete(), 0);
}

// === fuzzing mutated heads ===

/// Short timeouts, so an exchange the mutation left waiting for more
/// bytes (a head without its end, a body shorter than declared) is closed
/// by the gateway well inside [`FUZZ_BOUND`].
const FUZZ_CONFIG: &str = "[server]\nheader_read_timeout = \"300ms\"\nbody_timeout = \"300ms\"\nidle_timeout = \"300ms\"\n";

/// Each fuzz exchange is answered or closed within this.
const FUZZ_BOUND: Duration = Duration::from_secs(5);

/// How many mutated requests one run sends (about 25 ms each in a debug
/// build).
const FUZZ_CASES: u32 = 256;

/// Stop starting new fuzz exchanges after this, so a slow machine still
/// finishes in time; the run then passes on the cases it ran (at least
/// [`FUZZ_MIN_RUN`]).
const FUZZ_BUDGET: Duration = Duration::from_secs(10);

/// Fewest fuzz cases that must run within the budget.
const FUZZ_MIN_RUN: usize = 32;

/// Valid requests to mutate: the head (mutated), the body (sent as is).
const BASES: [(&str, &str); 4] = [
    (
        "GET /?fuzz HTTP/1.1\r\nhost: gw\r\nx-a: 1\r\nconnection: close\r\n\r\n",
        "",
    ),
    (
        "GET /?fuzz-keep-alive HTTP/1.1\r\nhost: gw\r\naccept: */*\r\n\r\n",
        "",
    ),
    (
        "POST /?fuzz-length HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
        "hello",
    ),
    (
        "POST /?fuzz-chunked HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ),
];

/// A well-formed request that may follow the mutated one in the same
/// write: it ends a keep-alive exchange, and completes a head the mutation
/// cut open (as garbage, which the gateway must refuse).
const SENTINEL: &[u8] = b"GET /?sentinel HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";

/// One edit of a head.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, u8),
    Delete(Index),
    Duplicate(Index),
    /// Repeats a whole line (a field, or the request line).
    RepeatLine(Index),
}

impl Mutation {
    fn apply(&self, head: &mut Vec<u8>) {
        if head.is_empty() {
            return;
        }
        match *self {
            Mutation::Insert(at, byte) => head.insert(at.index(head.len() + 1), byte),
            Mutation::Delete(at) => {
                head.remove(at.index(head.len()));
            }
            Mutation::Duplicate(at) => {
                let at = at.index(head.len());
                head.insert(at, head[at]);
            }
            Mutation::RepeatLine(which) => {
                let mut starts = vec![0];
                starts.extend(
                    head.iter()
                        .enumerate()
                        .filter(|&(i, &b)| b == b'\n' && i + 1 < head.len())
                        .map(|(i, _)| i + 1),
                );
                let start = starts[which.index(starts.len())];
                let end = head[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(head.len(), |p| start + p + 1);
                let line = head[start..end].to_vec();
                head.splice(end..end, line);
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(0u8),
        Just(b' '),
        Just(b'\t'),
        Just(b':'),
        Just(b','),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<Index>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Duplicate),
        any::<Index>().prop_map(Mutation::RepeatLine),
    ]
}

/// A mutated request: which base, the edits, whether the sentinel follows.
fn mutated() -> impl Strategy<Value = (usize, Vec<Mutation>, bool)> {
    (
        0..BASES.len(),
        proptest::collection::vec(mutation(), 1..=4),
        any::<bool>(),
    )
}

fn build((base, mutations, sentinel): &(usize, Vec<Mutation>, bool)) -> Vec<u8> {
    let (head, body) = BASES[*base];
    let mut raw = head.as_bytes().to_vec();
    for m in mutations {
        m.apply(&mut raw);
    }
    raw.extend_from_slice(body.as_bytes());
    if *sentinel {
        raw.extend_from_slice(SENTINEL);
    }
    raw
}

/// Whether process `pid` is running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, s)| s.starts_with('Z'))
    })
}

/// `GET /healthz` on a fresh connection answers 200.
async fn healthy(addr: SocketAddr) -> bool {
    let raw = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec();
    let (out, end) = exchange(addr, raw, FUZZ_BOUND).await;
    let (responses, _) = hostile::responses(&out);
    end == End::Closed && status_lines(&responses) == [hostile::OK]
}

/// One fuzz case against the three invariants.
async fn fuzz_one(gw: &Gateway, upstream: &BodyRecorder, raw: Vec<u8>) -> Result<(), String> {
    let before = upstream.complete();
    let (out, end) = exchange(gw.addr, raw, FUZZ_BOUND).await;
    if end == End::TimedOut {
        return Err(format!("neither answered nor closed within {FUZZ_BOUND:?}"));
    }
    let (responses, _) = hostile::responses(&out);
    let from_upstream = responses
        .iter()
        .filter(|r| r.values("x-recorded").eq(["1"]))
        .count();
    let forwarded = upstream.complete() - before;
    if forwarded > from_upstream {
        return Err(format!(
            "the upstream got {forwarded} request(s), the client {from_upstream} answer(s) from it: {:?}",
            String::from_utf8_lossy(&out)
        ));
    }
    if !alive(gw.pid()) || !healthy(gw.addr).await {
        return Err(format!("the gateway is down; output:\n{}", gw.output()));
    }
    Ok(())
}

#[test]
fn mutated_heads_never_hang_crash_or_reach_the_upstream_unanswered() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(BodyRecorder::start());
    let gw = Gateway::start_with_config(
        &["--no-access-log", "--upstream", &upstream.url()],
        FUZZ_CONFIG,
    );
    let started = rt.block_on(async { tokio::time::Instant::now() });
    let ran = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: FUZZ_CASES,
        // A manual runner has no source file to persist failures beside.
        failure_persistence: None,
        max_shrink_iters: 128,
        ..ProptestConfig::default()
    });
    let result = runner.run(&mutated(), |input| {
        if started.elapsed() > FUZZ_BUDGET {
            return Ok(());
        }
        ran.set(ran.get() + 1);
        let raw = build(&input);
        rt.block_on(fuzz_one(&gw, &upstream, raw))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        ran.get() >= FUZZ_MIN_RUN,
        "only {} cases within {FUZZ_BUDGET:?}",
        ran.get()
    );
    // The whole run: never more upstream requests than answers from it
    // (checked per case above), the gateway alive and serving at the end.
    assert!(alive(gw.pid()));
    assert!(rt.block_on(healthy(gw.addr)));
}
