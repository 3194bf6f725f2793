//! Header rewriting between client and upstream: the request's `Host`,
//! origin-form URI, HTTP/1.1 version, the hop-by-hop fields (RFC 9110
//! section 7.6.1) and the `X-Forwarded-For` / `Forwarded` elements
//! ([`ClientInfo`], formatted once per client connection).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Version};

use crate::balance::Upstream;

// === ClientInfo ===

/// The forwarding elements for one client address, formatted once per
/// client connection: each connection's copy of [`Proxy`] keeps the last
/// one and reuses it while the peer address (the `SocketAddr` request
/// extension, set per request by the connection) stays the same.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's IP address.
    pub ip: IpAddr,
    /// `X-Forwarded-For` element for this client.
    x_forwarded_for: HeaderValue,
    /// `Forwarded` element for this client.
    forwarded: HeaderValue,
}

impl ClientInfo {
    /// Info for a client at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let xff =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        // RFC 7239 section 6: IPv6 addresses are bracketed and quoted.
        let fwd = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        let forwarded =
            HeaderValue::from_str(&fwd).expect("a Forwarded element is a valid header value");
        Self {
            ip,
            x_forwarded_for: xff,
            forwarded,
        }
    }
}

/// Rewrites the request in place for `upstream`.
pub fn prepare_request<B>(req: &mut Request<B>, upstream: &Upstream, client: Option<ClientInfo>) {
    // The upstream keeps seeing the name the client used. An h2 client sends
    // no Host header, only the URI authority; keep that as Host, as an h1
    // client would have sent it.
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().unwrap_or(&upstream.authority);
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    // Origin form (`/path?query`) on the wire to the upstream.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    // The upstream side always speaks HTTP/1.1, whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    if let Some(info) = client {
        append_list(headers, X_FORWARDED_FOR, info.x_forwarded_for);
        append_list(headers, header::FORWARDED, info.forwarded);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends `element` to the comma-separated list `name`, joining existing
/// field lines into one (some upstreams read only the first line).
fn append_list(headers: &mut HeaderMap, name: HeaderName, element: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(element);
        }
        header::Entry::Occupied(mut o) => {
            let mut joined = Vec::with_capacity(64);
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(element.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    o.insert(v);
                }
                // Unreachable in practice (joined valid values stay valid);
                // fall back to a second field line.
                Err(_) => o.append(element),
            }
        }
    }
}

/// The hop-by-hop fields of RFC 9110 section 7.6.1 (plus `Proxy-Connection`,
/// which old clients send): they describe one connection and must not be
/// forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including every field named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: one pass over the (few) fields, comparing names, instead of
    // a hashed lookup per hop-by-hop name; most messages carry none.
    let any = headers
        .keys()
        .any(|k| k == header::CONNECTION || HOP_BY_HOP.contains(k));
    if !any {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        // `remove` drops every `Connection` field line.
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}
