//! Hostile HTTP/1.1 requests for the gateway's edge (issue 23), each with
//! the outcome the gateway must have.
//!
//! Plain data, and one raw tokio client ([`exchange`]) that sends a case:
//! `tests/edge_hostile.rs` sends every case to
//! the real gateway and asserts [`Case::statuses`] and [`Case::upstream`]
//! exactly; `examples/edgecheck.rs` sends the same bytes to any HTTP/1.1
//! server (`scripts/edge-compare.sh` puts nginx beside the gateway). Both
//! include this file with `#[path]`.
//!
//! Every target is `/?<case name>` where the attack leaves the target
//! alone, so the upstream's record names the case. A case that the gateway
//! would otherwise keep open ends with `Connection: close`, so an exchange
//! ends when the server closes; the cases that must not be read past their
//! first request (a smuggled request behind it) rely on the server closing
//! instead, and put `Connection: close` on the smuggled request, so a
//! server that wrongly answers it still ends the exchange.

// Included as a private module of a test and of an example: its `pub`
// items are the interface between those two files, not a crate's API, and
// each includer reads a different subset of it.
#![allow(unreachable_pub, dead_code)]

/// `HTTP/1.1 200 OK`: forwarded, and the upstream's answer relayed.
pub const OK: &str = "HTTP/1.1 200 OK";
/// `HTTP/1.1 400 Bad Request`: hyper's answer to a head it cannot parse
/// unambiguously, or the gateway's to a bad `Host` or a broken body.
pub const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request";
/// `HTTP/1.1 405 Method Not Allowed`: the gateway's edge check (`CONNECT`,
/// `TRACE`).
pub const METHOD_NOT_ALLOWED: &str = "HTTP/1.1 405 Method Not Allowed";
/// `HTTP/1.1 431 Request Header Fields Too Large`: a head over the budget
/// (`server.max_header_bytes`, `server.max_headers`).
pub const HEAD_TOO_LARGE: &str = "HTTP/1.1 431 Request Header Fields Too Large";

/// `HTTP/1.1 414 URI Too Long`: a request line that does not fit the head
/// budget (hyper's answer, like nginx's).
pub const URI_TOO_LONG: &str = "HTTP/1.1 414 URI Too Long";

/// How the upstream found the end of a forwarded request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    /// `Content-Length: N`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One request as the upstream must receive it, whole (its body complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The request line, e.g. `POST /?cl-te HTTP/1.1`.
    pub request_line: &'static str,
    /// The framing the gateway chose for the body on its way upstream.
    pub framing: Framing,
    /// The body after the upstream decoded that framing.
    pub body: &'static [u8],
    /// Fields the forwarded head must carry exactly: for each name, the
    /// only value of that name (one field line), lower-case name.
    pub fields: &'static [(&'static str, &'static str)],
}

impl Forwarded {
    /// A complete request without a body.
    pub const fn get(request_line: &'static str) -> Forwarded {
        Forwarded {
            request_line,
            framing: Framing::None,
            body: b"",
            fields: &[],
        }
    }

    /// A complete request with `body`, framed as `framing` upstream.
    pub const fn with_body(
        request_line: &'static str,
        framing: Framing,
        body: &'static [u8],
    ) -> Forwarded {
        Forwarded {
            request_line,
            framing,
            body,
            fields: &[],
        }
    }
}

/// One hostile request and the outcome the gateway must have.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short name, unique, also the target's query (`/?name`).
    pub name: &'static str,
    /// What the bytes try, in a few words.
    pub attack: &'static str,
    /// The bytes, written at once on a fresh connection.
    pub raw: Vec<u8>,
    /// The status line of every response the client must read, in order,
    /// before the gateway closes the connection. Empty: closed without an
    /// answer.
    pub statuses: &'static [&'static str],
    /// Every request the upstream must receive for this case, in order.
    /// Empty: nothing reaches the upstream.
    pub upstream: Vec<Forwarded>,
}

fn case(
    name: &'static str,
    attack: &'static str,
    raw: impl Into<Vec<u8>>,
    statuses: &'static [&'static str],
    upstream: &[Forwarded],
) -> Case {
    Case {
        name,
        attack,
        raw: raw.into(),
        statuses,
        upstream: upstream.to_vec(),
    }
}

/// `GET /?<name>` with `host: gw`, `fields` (each ending in `\r\n`) and
/// `connection: close`.
fn get(name: &str, fields: &str) -> Vec<u8> {
    format!("GET /?{name} HTTP/1.1\r\nhost: gw\r\n{fields}connection: close\r\n\r\n").into_bytes()
}

/// A CL+TE request whose `Content-Length` covers a whole second request:
/// a server that frames by length reads `0\r\n\r\nGET /?smuggled ...` as the
/// body, one that frames by chunks sees the `GET` as the next request.
fn cl_and_te(name: &str, cl_first: bool) -> Vec<u8> {
    let body = "0\r\n\r\nGET /?smuggled HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let cl = format!("content-length: {}\r\n", body.len());
    let te = "transfer-encoding: chunked\r\n";
    let (first, second) = if cl_first {
        (cl.as_str(), te)
    } else {
        (te, cl.as_str())
    };
    format!("POST /?{name} HTTP/1.1\r\nhost: gw\r\n{first}{second}\r\n{body}").into_bytes()
}

/// A `POST /?<name>` with `framing` (field lines ending in `\r\n`) and the
/// raw `body`, closing.
fn post(name: &str, framing: &str, body: &[u8]) -> Vec<u8> {
    let mut raw =
        format!("POST /?{name} HTTP/1.1\r\nhost: gw\r\n{framing}connection: close\r\n\r\n")
            .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Every case, in a fixed order.
pub fn cases() -> Vec<Case> {
    vec![
        // === framing: Content-Length and Transfer-Encoding ===
        // Both framings: hyper frames by the chunks and drops the
        // Content-Length before the gateway sees the head, then closes the
        // connection after answering (RFC 9112 §6.3 allows processing by
        // Transfer-Encoding if the connection is closed afterwards), so the
        // smuggled GET is never read. The upstream gets one request,
        // re-framed, without Content-Length.
        case(
            "cl-te",
            "Content-Length then Transfer-Encoding, a request smuggled in the body",
            cl_and_te("cl-te", true),
            &[OK],
            &[Forwarded::with_body(
                "POST /?cl-te HTTP/1.1",
                Framing::Chunked,
                b"",
            )],
        ),
        case(
            "te-cl",
            "Transfer-Encoding then Content-Length, a request smuggled in the body",
            cl_and_te("te-cl", false),
            &[OK],
            &[Forwarded::with_body(
                "POST /?te-cl HTTP/1.1",
                Framing::Chunked,
                b"",
            )],
        ),
        case(
            "cl-cl-differ",
            "two Content-Length fields with different values",
            post(
                "cl-cl-differ",
                "content-length: 5\r\ncontent-length: 6\r\n",
                b"hello!",
            ),
            &[BAD_REQUEST],
            &[],
        ),
        // Repeated identical values are one length (RFC 9110 §8.6 lets a
        // recipient accept them); one Content-Length goes upstream.
        case(
            "cl-cl-same",
            "two Content-Length fields with the same value",
            post(
                "cl-cl-same",
                "content-length: 5\r\ncontent-length: 5\r\n",
                b"hello",
            ),
            &[OK],
            &[Forwarded::with_body(
                "POST /?cl-cl-same HTTP/1.1",
                Framing::Length(5),
                b"hello",
            )],
        ),
        // hyper refuses the list form outright, even with equal members.
        case(
            "cl-list-same",
            "Content-Length: 5, 5",
            post("cl-list-same", "content-length: 5, 5\r\n", b"hello"),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "cl-list-differ",
            "Content-Length: 5, 6",
            post("cl-list-differ", "content-length: 5, 6\r\n", b"hello!"),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity (chunked not last)",
            post(
                "te-chunked-identity",
                "transfer-encoding: chunked, identity\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[BAD_REQUEST],
            &[],
        ),
        // Whitespace around a field value is not part of it (RFC 9110 §5.5).
        case(
            "te-leading-space",
            "Transfer-Encoding:  chunked (extra whitespace before the value)",
            post(
                "te-leading-space",
                "transfer-encoding:  chunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[OK],
            &[Forwarded::with_body(
                "POST /?te-leading-space HTTP/1.1",
                Framing::Chunked,
                b"hello",
            )],
        ),
        case(
            "te-xchunked",
            "Transfer-Encoding: xchunked",
            post(
                "te-xchunked",
                "transfer-encoding: xchunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "te-space-before-colon",
            "Transfer-Encoding : chunked (space before the colon)",
            post(
                "te-space-before-colon",
                "transfer-encoding : chunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "te-vtab",
            "transfer-encoding: \\x0bchunked (vertical tab)",
            post(
                "te-vtab",
                "transfer-encoding: \x0bchunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "te-http10",
            "Transfer-Encoding in an HTTP/1.0 request",
            b"POST /?te-http10 HTTP/1.0\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "chunk-size-overflow",
            "chunk size ffffffffffffffffff1 (overflows 64 bits)",
            post(
                "chunk-size-overflow",
                "transfer-encoding: chunked\r\n",
                b"ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            ),
            // The gateway's own 400 (`request body aborted`): hyper finds
            // the overflow while reading the body, before the request's
            // head has left for the upstream.
            &[BAD_REQUEST],
            &[],
        ),
        // === line syntax ===
        case(
            "obs-fold-space",
            "a field continued on a line starting with a space (obs-fold)",
            get("obs-fold-space", "x-a: 1\r\n 2\r\n"),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "obs-fold-tab",
            "a field continued on a line starting with a tab (obs-fold)",
            get("obs-fold-tab", "x-a: 1\r\n\t2\r\n"),
            &[BAD_REQUEST],
            &[],
        ),
        // RFC 9112 §2.2 lets a recipient accept a bare LF as a line end;
        // the upstream gets CRLF lines, so no parser behind disagrees.
        case(
            "bare-lf",
            "lines ended by LF alone",
            b"GET /?bare-lf HTTP/1.1\nhost: gw\nconnection: close\n\n".to_vec(),
            &[OK],
            &[Forwarded::get("GET /?bare-lf HTTP/1.1")],
        ),
        case(
            "bare-cr",
            "lines ended by CR alone",
            b"GET /?bare-cr HTTP/1.1\rhost: gw\rconnection: close\r\r".to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "nul-in-value",
            "a NUL byte in a field value",
            get("nul-in-value", "x-a: a\0b\r\n"),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "nul-in-target",
            "a NUL byte in the target",
            b"GET /?nul-in\0target HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "space-in-target",
            "a space inside the target",
            b"GET /?space in-target HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "invalid-method",
            "a method that is not a token (G(T)",
            b"G(T /?invalid-method HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        // === size ===
        case(
            "5000-fields",
            "5,000 header fields (55 KB, under the byte budget)",
            get("5000-fields", &many_fields(5000)),
            &[HEAD_TOO_LARGE],
            &[],
        ),
        case(
            "100kb-uri",
            "a 100 KB target",
            {
                let mut raw = b"GET /?100kb-uri&".to_vec();
                raw.resize(raw.len() + 100_000, b'a');
                raw.extend_from_slice(b" HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
                raw
            },
            &[URI_TOO_LONG],
            &[],
        ),
        case(
            "200kb-field",
            "one 200 KB header field",
            get(
                "200kb-field",
                &format!("x-big: {}\r\n", "a".repeat(200_000)),
            ),
            &[HEAD_TOO_LARGE],
            &[],
        ),
        // === hop-by-hop and pipelining ===
        // The gateway drops what Connection names, then appends its own
        // forwarding fields: the forged address never reaches the upstream.
        case(
            "connection-xff",
            "Connection: X-Forwarded-For to drop the gateway's field, and a forged one",
            get(
                "connection-xff",
                "connection: x-forwarded-for\r\nx-forwarded-for: 6.6.6.6\r\n",
            ),
            &[OK],
            &[Forwarded {
                request_line: "GET /?connection-xff HTTP/1.1",
                framing: Framing::None,
                body: b"",
                fields: &[
                    ("x-forwarded-for", "127.0.0.1"),
                    ("forwarded", "for=127.0.0.1;proto=http"),
                ],
            }],
        ),
        // Content-Length goes with the Connection-named fields; hyper frames
        // the forwarded body again from its known length.
        case(
            "connection-content-length",
            "Connection: content-length, to strip the body's framing upstream",
            post(
                "connection-content-length",
                "content-length: 5\r\nconnection: content-length\r\n",
                b"hello",
            ),
            &[OK],
            &[Forwarded::with_body(
                "POST /?connection-content-length HTTP/1.1",
                Framing::Length(5),
                b"hello",
            )],
        ),
        case(
            "pipelined",
            "three GETs in one write",
            b"GET /?pipelined-1 HTTP/1.1\r\nhost: gw\r\n\r\n\
              GET /?pipelined-2 HTTP/1.1\r\nhost: gw\r\n\r\n\
              GET /?pipelined-3 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
                .to_vec(),
            &[OK, OK, OK],
            &[
                Forwarded::get("GET /?pipelined-1 HTTP/1.1"),
                Forwarded::get("GET /?pipelined-2 HTTP/1.1"),
                Forwarded::get("GET /?pipelined-3 HTTP/1.1"),
            ],
        ),
        // === methods and Host ===
        case(
            "connect",
            "CONNECT, with a tunnelled request right behind it",
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n\
              GET /?tunnelled HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
                .to_vec(),
            &[METHOD_NOT_ALLOWED],
            &[],
        ),
        case(
            "trace",
            "TRACE, which would reflect the cookie",
            b"TRACE /?trace HTTP/1.1\r\nhost: gw\r\ncookie: secret\r\nconnection: close\r\n\r\n"
                .to_vec(),
            &[METHOD_NOT_ALLOWED],
            &[],
        ),
        case(
            "purge",
            "an unknown but valid method token",
            b"PURGE /?purge HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec(),
            &[OK],
            &[Forwarded::get("PURGE /?purge HTTP/1.1")],
        ),
        case(
            "no-host",
            "HTTP/1.1 without Host",
            b"GET /?no-host HTTP/1.1\r\nconnection: close\r\n\r\n".to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "two-hosts",
            "two Host fields",
            get("two-hosts", "host: evil\r\n"),
            &[BAD_REQUEST],
            &[],
        ),
        case(
            "host-vs-target",
            "a Host other than the absolute-form target's",
            b"GET http://evil/?host-vs-target HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
                .to_vec(),
            &[BAD_REQUEST],
            &[],
        ),
        // Forwarded as HTTP/1.1 with the upstream's authority as Host.
        case(
            "http10-no-host",
            "HTTP/1.0 without Host (allowed)",
            b"GET /?http10-no-host HTTP/1.0\r\n\r\n".to_vec(),
            &["HTTP/1.0 200 OK"],
            &[Forwarded::get("GET /?http10-no-host HTTP/1.1")],
        ),
    ]
}

/// `n` distinct small header fields.
fn many_fields(n: usize) -> String {
    (0..n).map(|i| format!("x-{i:04}: 1\r\n")).collect()
}

// === reading the answers ===

/// One response read from a client connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The fields, names lower-cased, in order.
    pub fields: Vec<(String, String)>,
}

impl Response {
    /// The values of the fields named `name` (lower-case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits the bytes a server sent on one connection into responses, each
/// framed by its `Content-Length` or chunked coding (none of these cases
/// is a `HEAD`, so every length is a body). Returns them and whatever
/// followed the last complete one (empty for a well-formed stream).
pub fn responses(mut bytes: &[u8]) -> (Vec<Response>, &[u8]) {
    let mut out = Vec::new();
    while let Some((response, rest)) = one_response(bytes) {
        out.push(response);
        bytes = rest;
    }
    (out, bytes)
}

fn one_response(bytes: &[u8]) -> Option<(Response, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.to_owned();
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let mut fields = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        fields.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let response = Response {
        status_line,
        fields,
    };
    let rest = &bytes[end + 4..];
    let chunked = response
        .values("transfer-encoding")
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    let rest = if chunked {
        skip_chunked(rest)?
    } else {
        let len: usize = match response.values("content-length").next() {
            Some(v) => v.parse().ok()?,
            None => 0,
        };
        rest.get(len..)?
    };
    Some((response, rest))
}

/// The bytes after a whole chunked body (without trailers).
fn skip_chunked(mut bytes: &[u8]) -> Option<&[u8]> {
    loop {
        let eol = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&bytes[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[eol + 2..];
        if size == 0 {
            return bytes.strip_prefix(b"\r\n");
        }
        bytes = bytes.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

// === a raw client ===

/// How an [`exchange`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (end of stream).
    Closed,
    /// The connection was reset.
    Reset,
    /// Neither within the bound.
    TimedOut,
}

impl End {
    /// `closed`, `reset` or `timeout`: a table cell.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::TimedOut => "timeout",
        }
    }
}

/// Writes `raw` on a new connection to `addr` while reading until the
/// server closes it, at most `bound`; returns what was read and how it
/// ended. A write cut short by the server's close is expected (a head over
/// the budget is refused before it is all sent). The write side is kept
/// open (no half-close): some servers read an end of stream as the client
/// leaving and drop the answer.
pub async fn exchange(
    addr: std::net::SocketAddr,
    raw: Vec<u8>,
    bound: std::time::Duration,
) -> std::io::Result<(Vec<u8>, End)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        wr
    });
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = tokio::time::timeout(bound, async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return End::Closed,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(_) => return End::Reset,
            }
        }
    })
    .await
    .unwrap_or(End::TimedOut);
    writer.abort();
    Ok((out, end))
}
