//! Key extractors for HTTP requests.
//!
//! The peer address comes from the request extensions, in whichever form the
//! server puts it there (see [`PeerIp`]).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use http::{Extensions, HeaderName, HeaderValue, Request, header::FORWARDED};
use ipnet::IpNet;

use crate::KeyExtractor;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The default IPv6 prefix [`PeerIp`] and [`ClientIp`] key by: a /64, what
/// one subscriber usually holds (and can rotate addresses inside).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// What [`PeerIp`] and [`ClientIp`] report as missing without a peer address.
const NO_PEER: &str = "peer address request extension (`SocketAddr`, axum's \
    `ConnectInfo<SocketAddr>` with feature `axum`, or the type set with `connect_info`)";

/// A connection-info type that knows the peer's address, so [`PeerIp`] and
/// [`ClientIp`] can read it from the request extensions
/// ([`PeerIp::connect_info`]).
///
/// Implemented for `SocketAddr` and, with feature `axum`, for axum's
/// `ConnectInfo<T>`. For a type of another crate (tonic's
/// `TcpConnectInfo`), use [`PeerIp::peer_addr_with`] instead.
///
/// ```
/// use std::net::SocketAddr;
/// use palisade_ratelimit::http::{PeerAddr, PeerIp};
///
/// #[derive(Clone)]
/// struct MyConnInfo { remote: SocketAddr, tls: bool }
///
/// impl PeerAddr for MyConnInfo {
///     fn peer_addr(&self) -> Option<SocketAddr> { Some(self.remote) }
/// }
///
/// let extractor = PeerIp::new().connect_info::<MyConnInfo>();
/// # let _ = extractor;
/// ```
pub trait PeerAddr: Send + Sync + 'static {
    /// The remote address of the connection, if known.
    fn peer_addr(&self) -> Option<SocketAddr>;
}

impl PeerAddr for SocketAddr {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(*self)
    }
}

#[cfg(feature = "axum")]
impl<T: PeerAddr> PeerAddr for axum::extract::ConnectInfo<T> {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.0.peer_addr()
    }
}

/// Reads a peer address from a request's extensions.
pub type PeerLookup = fn(&Extensions) -> Option<SocketAddr>;

fn lookup<T: PeerAddr>(extensions: &Extensions) -> Option<SocketAddr> {
    extensions.get::<T>()?.peer_addr()
}

/// The peer address: the configured lookup first, then a bare `SocketAddr`
/// (palisade's `Server`, most hyper setups), then axum's
/// `ConnectInfo<SocketAddr>` (`into_make_service_with_connect_info`).
#[inline]
fn peer_of(extensions: &Extensions, custom: Option<PeerLookup>) -> Option<SocketAddr> {
    if let Some(found) = custom.and_then(|f| f(extensions)) {
        return Some(found);
    }
    if let Some(addr) = extensions.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    None
}

/// Keys by the TCP peer's IP address, read from the request extensions in
/// any of the forms servers put it there:
///
/// - a bare `SocketAddr` (palisade's `Server`; a hyper `service_fn` that
///   inserts it);
/// - axum's `ConnectInfo<SocketAddr>`, from `axum::serve(listener,
///   app.into_make_service_with_connect_info::<SocketAddr>())` (feature
///   `axum`);
/// - your own connection-info type ([`connect_info`](Self::connect_info)),
///   or any lookup function ([`peer_addr_with`](Self::peer_addr_with)), for
///   example for tonic, whose server inserts a `TcpConnectInfo`:
///   `PeerIp::new().peer_addr_with(|ext| ext.get::<TcpConnectInfo>()?.remote_addr())`.
///
/// A request without a peer address is refused by the policy with
/// [`MissingKey`](crate::MissingKey) (a 500, logged at `error` once per
/// policy and counted in `palisade_ratelimit_missing_key_total`), unless the
/// policy allows missing keys: a limit that cannot apply never passes
/// requests silently.
///
/// IPv6 peers are keyed by their /64 ([`DEFAULT_IPV6_PREFIX`]), so a client
/// rotating addresses inside its prefix keeps one budget; IPv4 addresses
/// (and IPv4-mapped IPv6) are keyed whole.
///
/// Behind a reverse proxy every request has the proxy's address; use
/// [`ClientIp`] there.
#[derive(Clone, Copy, Debug)]
pub struct PeerIp {
    ipv6_prefix: Option<u8>,
    lookup: Option<PeerLookup>,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self {
            ipv6_prefix: Some(DEFAULT_IPV6_PREFIX),
            lookup: None,
        }
    }
}

impl PeerIp {
    /// Keys by the peer address, IPv6 by its /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys IPv6 peers by their first `bits` bits instead of 64 (128 keys
    /// by the full address). Values above 128 are treated as 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = Some(bits.min(128));
        self
    }

    /// Also reads the peer from a `T` in the request extensions (tried
    /// before the built-in forms).
    pub fn connect_info<T: PeerAddr>(self) -> Self {
        self.peer_addr_with(lookup::<T>)
    }

    /// Also reads the peer with `lookup` (tried before the built-in forms):
    /// for connection-info types of other crates, which cannot implement
    /// [`PeerAddr`] here.
    pub fn peer_addr_with(mut self, lookup: PeerLookup) -> Self {
        self.lookup = Some(lookup);
        self
    }
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = IpAddr;

    #[inline]
    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = peer_of(req.extensions(), self.lookup)?;
        Some(mask(canonical(peer.ip()), self.ipv6_prefix))
    }

    fn missing(&self) -> &'static str {
        NO_PEER
    }
}

/// Which header a [`ClientIp`] reads the forwarding chain from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1` (the `for` parameter).
    Forwarded,
}

/// Keys by the client's IP address behind trusted reverse proxies, in a way a
/// client cannot spoof.
///
/// If the TCP peer is not in a trusted CIDR, the key is the peer address and
/// the forwarding header is ignored (anyone can send one). Otherwise the
/// forwarding chain is read **right to left** (the rightmost entry was added
/// by the proxy that talks to us), skipping addresses in trusted CIDRs; the
/// first untrusted address is the client. If every address is trusted, the
/// leftmost one is used; if an entry does not parse, the last trusted hop
/// before it is used, so a garbled or hostile header never lets a client pick
/// its own key.
///
/// The peer address is found as [`PeerIp`] finds it (a `SocketAddr`, axum's
/// `ConnectInfo`, or a configured type or lookup).
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use http::Request;
/// use palisade_ratelimit::{KeyExtractor, http::ClientIp};
///
/// let extractor = ClientIp::new(["10.0.0.0/8".parse()?]);
/// let mut req = Request::builder()
///     .header("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.0.0.2")
///     .body(())?;
/// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 5000)));
/// // 10.0.0.2 is a trusted proxy; 198.51.100.4 is the first untrusted hop.
/// assert_eq!(extractor.extract(&req), Some("198.51.100.4".parse::<IpAddr>()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    ipv6_prefix: Option<u8>,
    lookup: Option<PeerLookup>,
}

impl ClientIp {
    /// Trusts the proxies in `trusted` (CIDRs; an empty list means the peer
    /// address is always the key). Reads `X-Forwarded-For`.
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().map(|net| net.trunc()).collect(),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: Some(DEFAULT_IPV6_PREFIX),
            lookup: None,
        }
    }

    /// Reads the chain from `header` instead.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits instead of 64; see
    /// [`PeerIp::ipv6_prefix`].
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = Some(bits.min(128));
        self
    }

    /// Also reads the peer from a `T` in the request extensions; see
    /// [`PeerIp::connect_info`].
    pub fn connect_info<T: PeerAddr>(self) -> Self {
        self.peer_addr_with(lookup::<T>)
    }

    /// Also reads the peer with `lookup`; see [`PeerIp::peer_addr_with`].
    pub fn peer_addr_with(mut self, lookup: PeerLookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a peer and the request's headers.
    fn resolve<B>(&self, req: &Request<B>, peer: IpAddr) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &FORWARDED,
        };
        let mut client = peer;
        // Several header lines form one list, in order; walk it backwards.
        for line in req.headers().get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return client;
            };
            for hop in line.rsplit(',') {
                let parsed = match self.header {
                    ForwardedHeader::XForwardedFor => parse_xff(hop),
                    ForwardedHeader::Forwarded => parse_forwarded(hop),
                };
                let Some(ip) = parsed else {
                    return client;
                };
                let ip = canonical(ip);
                client = ip;
                if !self.is_trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = canonical(peer_of(req.extensions(), self.lookup)?.ip());
        Some(mask(self.resolve(req, peer), self.ipv6_prefix))
    }

    fn missing(&self) -> &'static str {
        NO_PEER
    }
}

fn parse_xff(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    // Some proxies append a port; accept `1.2.3.4:80` and `[::1]:80` too.
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

fn parse_forwarded(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest
            .split_once(']')?
            .0
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) are keyed as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, ipv6_prefix: Option<u8>) -> IpAddr {
    match (ip, ipv6_prefix) {
        (IpAddr::V6(v6), Some(bits)) => {
            let bits = u32::from(bits);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        (ip, _) => ip,
    }
}

/// Keys by the value of a request header (an API key, a tenant id). A
/// request without the header is refused by the policy
/// ([`MissingKey`](crate::MissingKey)); build the policy with
/// [`allow_missing`](crate::PerKey::allow_missing) if the header is optional,
/// and pair it with a per-IP policy.
///
/// The key is an owned copy of at most [`max_len`](Self::max_len) bytes
/// ([`DEFAULT_HEADER_KEY_LEN`] by default), never the request's own header
/// value: that one is a slice of the server's read buffer, and keeping it as
/// a key would keep the whole buffer alive for as long as the key is tracked.
/// A longer value is keyed by its first bytes and a hash of the whole value
/// (random per extractor), so the bytes a tracked key holds are bounded.
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
    max_len: usize,
    hasher: foldhash::fast::RandomState,
}

/// The default [`HeaderKey::max_len`]: 128 bytes.
pub const DEFAULT_HEADER_KEY_LEN: usize = 128;

/// Bytes of the hash suffix of a shortened [`HeaderKey`] key: `~` and 16 hex
/// digits.
const HASH_SUFFIX: usize = 17;

impl HeaderKey {
    /// Keys by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            max_len: DEFAULT_HEADER_KEY_LEN,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The most bytes a key holds (at least 32; smaller values are raised).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(32);
        self
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = HeaderValue;

    fn extract(&self, req: &Request<B>) -> Option<HeaderValue> {
        use std::hash::BuildHasher;
        let value = req.headers().get(&self.name)?.as_bytes();
        if value.len() <= self.max_len {
            // A copy, so the key does not share the request's buffer.
            return HeaderValue::from_bytes(value).ok();
        }
        let keep = self.max_len - HASH_SUFFIX;
        let mut key = Vec::with_capacity(self.max_len);
        key.extend_from_slice(&value[..keep]);
        key.push(b'~');
        let hash = self.hasher.hash_one(value);
        key.extend_from_slice(format!("{hash:016x}").as_bytes());
        HeaderValue::from_bytes(&key).ok()
    }

    fn missing(&self) -> &'static str {
        "key header"
    }
}

/// Keys by route: the longest configured path prefix the request matches.
/// A request matching no prefix is refused by the policy unless it
/// [allows missing keys](crate::PerKey::allow_missing). Pair it with
/// [`KeyedLimiterBuilder::with_override`](crate::KeyedLimiterBuilder::with_override)
/// to give each route its own quota.
#[derive(Clone, Debug)]
pub struct RouteKey {
    /// Sorted longest first, so the first match is the longest.
    prefixes: Arc<[Arc<str>]>,
}

impl RouteKey {
    /// Routes by these path prefixes.
    pub fn new<I, S>(prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let mut prefixes: Vec<Arc<str>> = prefixes.into_iter().map(Into::into).collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self {
            prefixes: prefixes.into(),
        }
    }
}

impl<B> KeyExtractor<Request<B>> for RouteKey {
    type Key = Arc<str>;

    fn extract(&self, req: &Request<B>) -> Option<Arc<str>> {
        let path = req.uri().path();
        self.prefixes
            .iter()
            .find(|prefix| path.starts_with(&***prefix))
            .cloned()
    }

    fn missing(&self) -> &'static str {
        "route prefix matching its path"
    }
}

/// One key for every request: a global limit through the keyed machinery
/// (prefer a plain [`Limiter`](crate::Limiter), which is faster).
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    type Key = ();

    #[inline]
    fn extract(&self, _req: &Req) -> Option<()> {
        Some(())
    }
}
