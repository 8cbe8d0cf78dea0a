//! The egress policy (SPEC §13): where the proxy path, job targets and
//! webhook URLs may connect. One set of rules for all three, applied to the
//! *resolved* address right before the connection is made (the proxy
//! connects to exactly the address checked here), so a name that resolves to
//! a public address at submission and to `127.0.0.1` later (DNS rebinding)
//! is still refused.
//!
//! Rules, in order:
//! 1. this process's own listeners (proxy and control port, on loopback, the
//!    unspecified address or any address of this host) → `Loop`, always;
//! 2. `[egress] deny` / `deny_ports` → refused, always;
//! 3. link-local and cloud-metadata addresses and names → refused unless an
//!    `allow` CIDR covers the address (or an `allow` host names the host);
//! 4. for job targets and webhooks only: loopback, private, shared (CGNAT),
//!    unique-local, multicast and reserved addresses → refused unless allowed;
//!    ports other than 80 and 443 → refused unless in `allow_ports`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, EgressConfig, EgressRule};
use crate::resolve::{ResolveError, Resolver};

/// Who is about to connect; the policy is stricter for what the control API
/// (jobs) and stored URLs (webhooks) name than for what a proxy client could
/// reach anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A client's request through the proxy (and the requests it parks).
    Proxy,
    /// A job submitted through the job API.
    Job,
    /// A webhook delivery.
    Webhook,
    /// Another region's proxy, named by the operator in `[regions]`: only the
    /// loop check applies.
    Region,
}

impl Purpose {
    fn strict(self) -> bool {
        matches!(self, Purpose::Job | Purpose::Webhook)
    }
}

/// Why a destination is refused. The message names the host as given and,
/// for a name, the address it resolved to; never anything secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is this proxy's own listener")]
    Loop(String),
    #[error("{target} is not allowed: {why}")]
    Denied { target: String, why: String },
}

impl Refusal {
    fn denied(target: String, why: String) -> Result<(), Refusal> {
        Err(Refusal::Denied { target, why })
    }
}

/// Host names of cloud metadata services (GCP, AWS, Azure/OpenStack aliases).
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

/// Ports jobs and webhooks may use without `allow_ports`.
const WEB_PORTS: &[u16] = &[80, 443];

pub struct Egress {
    config: EgressConfig,
    /// The proxy and control listener ports.
    own_ports: Vec<u16>,
    /// Listen addresses and this host's interface addresses at start.
    own_ips: Vec<IpAddr>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("own_ports", &self.own_ports)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// The policy of `config`, with this host's interface addresses as read
    /// now (a pod's addresses do not change while it runs).
    pub fn new(config: &Config) -> Egress {
        let mut own_ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
            Ok(ifs) => ifs.into_iter().map(|i| canonical(i.ip())).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "egress: cannot list this host's addresses; only loopback and the listen addresses count as ourselves");
                Vec::new()
            }
        };
        Self::with_own_ips(config, std::mem::take(&mut own_ips))
    }

    fn with_own_ips(config: &Config, mut own_ips: Vec<IpAddr>) -> Egress {
        own_ips.push(canonical(config.proxy.listen.ip()));
        own_ips.push(canonical(config.control.listen.ip()));
        own_ips.sort();
        own_ips.dedup();
        let mut own_ports = vec![config.proxy.listen.port(), config.control.listen.port()];
        own_ports.dedup();
        Egress {
            config: config.egress.clone(),
            own_ports,
            own_ips,
        }
    }

    /// Whether `addr` is one of our own listeners.
    pub fn is_self(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.own_ports.contains(&addr.port())
            && (ip.is_loopback() || ip.is_unspecified() || self.own_ips.contains(&ip))
    }

    fn host_rule(rules: &[EgressRule], host: &str) -> bool {
        rules.iter().any(|r| match r {
            EgressRule::Host(h) => h == host,
            EgressRule::Suffix(s) => host.ends_with(s.as_str()),
            EgressRule::Net(_) => false,
        })
    }

    fn net_rule(rules: &[EgressRule], ip: IpAddr) -> bool {
        rules.iter().any(|r| match r {
            EgressRule::Net(n) => n.contains(&ip),
            _ => false,
        })
    }

    /// The checks a name allows before it is resolved: deny-listed and
    /// metadata names, ports. An IP literal (in any form a URL parser
    /// accepts, e.g. `2852039166`) is checked as an address.
    pub fn check_name(&self, purpose: Purpose, host: &str, port: u16) -> Result<(), Refusal> {
        let host = normalize(host);
        let literal = literal_ip(&host);
        self.check_normalized(purpose, &host, literal, port)
    }

    /// [`check_name`](Self::check_name) on a host already normalized, with
    /// its [`literal_ip`] (resolving needs both too: made once).
    fn check_normalized(
        &self,
        purpose: Purpose,
        host: &str,
        literal: Option<IpAddr>,
        port: u16,
    ) -> Result<(), Refusal> {
        if let Some(ip) = literal {
            return self.check_addr(purpose, host, SocketAddr::new(ip, port));
        }
        if purpose == Purpose::Region {
            return Ok(());
        }
        let denied = |why: String| Refusal::denied(format!("{host}:{port}"), why);
        if Self::host_rule(&self.config.deny, host) {
            return denied("the host is listed in [egress] deny".into());
        }
        if METADATA_HOSTS.contains(&host) && !Self::host_rule(&self.config.allow, host) {
            return denied("cloud metadata host".into());
        }
        self.check_port(purpose, host, port)
    }

    fn check_port(&self, purpose: Purpose, host: &str, port: u16) -> Result<(), Refusal> {
        if purpose == Purpose::Region {
            return Ok(());
        }
        let denied = |why: String| Refusal::denied(format!("{host}:{port}"), why);
        let listed =
            |ranges: &[(u16, u16)]| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port));
        if listed(&self.config.deny_ports) {
            return denied(format!("port {port} is listed in [egress] deny_ports"));
        }
        if purpose.strict() && !WEB_PORTS.contains(&port) && !listed(&self.config.allow_ports) {
            return denied(format!(
                "jobs and webhooks may use ports 80 and 443 (add {port} to [egress] allow_ports)"
            ));
        }
        Ok(())
    }

    /// The full check of one resolved address of `host`.
    pub fn check_addr(
        &self,
        purpose: Purpose,
        host: &str,
        addr: SocketAddr,
    ) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        // Made only for a refusal: on every allowed request it cost two
        // look-ups of the host and a `format!` (docs/performance.md).
        let shown = || {
            if literal_ip(host).is_some() {
                SocketAddr::new(ip, addr.port()).to_string()
            } else {
                format!("{host}:{} ({ip})", addr.port())
            }
        };
        if self.is_self(SocketAddr::new(ip, addr.port())) {
            return Err(Refusal::Loop(shown()));
        }
        if purpose == Purpose::Region {
            return Ok(());
        }
        self.check_classes(purpose, host, ip, &shown)?;
        self.check_port(purpose, host, addr.port())
    }

    /// The address checks that do not need the port (for a resolver that is
    /// told only the name, as reqwest's is). The caller checks the port and
    /// the loop with [`check_addr`](Self::check_addr) beforehand.
    pub fn check_ip(&self, purpose: Purpose, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if purpose == Purpose::Region {
            return Ok(());
        }
        let ip = canonical(ip);
        self.check_classes(purpose, host, ip, &|| format!("{host} ({ip})"))
    }

    fn check_classes(
        &self,
        purpose: Purpose,
        host: &str,
        ip: IpAddr,
        shown: &dyn Fn() -> String,
    ) -> Result<(), Refusal> {
        let denied = |why: String| Refusal::denied(shown(), why);
        if Self::net_rule(&self.config.deny, ip) || Self::host_rule(&self.config.deny, host) {
            return denied("listed in [egress] deny".into());
        }
        if let Some(class) = always_refused(ip) {
            // Only an explicit CIDR opens these: a host allow-list entry that
            // later resolves to the metadata address must not.
            if !Self::net_rule(&self.config.allow, ip) {
                return denied(format!("{class} (open it with an [egress] allow CIDR)"));
            }
        }
        // The allow lists matter only to a strict purpose: not looked through
        // for every proxied request.
        if purpose.strict()
            && !(Self::net_rule(&self.config.allow, ip)
                || Self::host_rule(&self.config.allow, host))
        {
            if let Some(class) = internal(ip) {
                return denied(format!(
                    "{class}; jobs and webhooks may not reach it unless [egress] allow lists it"
                ));
            }
        }
        Ok(())
    }

    /// Static check of an absolute http(s) URL (at submission): the name
    /// checks, and the address checks when the host is an IP literal.
    pub fn check_url(&self, purpose: Purpose, url: &str) -> Result<(), Refusal> {
        let parsed = url::Url::parse(url).map_err(|_| Refusal::Denied {
            target: url.to_string(),
            why: "not an absolute URL".into(),
        })?;
        let (host, port) = url_host_port(&parsed).ok_or_else(|| Refusal::Denied {
            target: url.to_string(),
            why: "the URL has no host or port".into(),
        })?;
        self.check_name(purpose, &host, port)
    }

    /// Resolve `host` and keep the addresses the policy allows, in the
    /// resolver's order. `Err(Refusal)` when every address is refused (a
    /// loop wins over other refusals so the client sees `508`).
    pub async fn resolve(
        &self,
        resolver: &Resolver,
        purpose: Purpose,
        host: &str,
        port: u16,
    ) -> Result<Result<Vec<SocketAddr>, Refusal>, ResolveError> {
        let name = normalize(host);
        let literal = literal_ip(&name);
        if let Err(r) = self.check_normalized(purpose, &name, literal, port) {
            return Ok(Err(r));
        }
        // An IP literal was checked as an address just above, in full (the
        // loop, the classes, the port): checking it again below cost every
        // request to an address as much again (docs/performance.md, "The
        // eighteenth pass").
        if let Some(ip) = literal {
            return Ok(Ok(vec![SocketAddr::new(ip, port)]));
        }
        let ips = resolver.resolve(&name).await?;
        let mut ok = Vec::with_capacity(ips.len());
        let mut first_refusal = None;
        for &ip in &ips {
            let addr = SocketAddr::new(ip, port);
            match self.check_addr(purpose, &name, addr) {
                Ok(()) => ok.push(addr),
                Err(r @ Refusal::Loop(_)) => return Ok(Err(r)),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        Ok(match (ok.is_empty(), first_refusal) {
            (false, _) => Ok(ok),
            (true, Some(r)) => Err(r),
            (true, None) => Err(Refusal::Denied {
                target: name.into_owned(),
                why: "no address".into(),
            }),
        })
    }
}

/// Host and port of a parsed http(s) URL; IPv6 without brackets.
pub fn url_host_port(url: &url::Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_string(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port_or_known_default()?))
}

/// Lower-case, no brackets, no trailing dot. Borrowed when `host` is
/// already so (a proxied request's host was normalized when it was
/// identified): no allocation per request.
fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// An IP written as a host, in any form a URL parser turns into one
/// (`2852039166`, `0xa9.0xfe.0xa9.0xfe`, `::ffff:169.254.169.254`): clients
/// and resolvers disagree on these, so they are checked as the address they
/// may become.
fn literal_ip(host: &str) -> Option<IpAddr> {
    // A name first: most hosts are names, and std's address parser tries
    // IPv4 and then IPv6 on them (~1.6k instructions per request, wasted).
    // Neither can read a name whose last label is not a number, and IPv6
    // needs a colon.
    let colon = host.contains(':');
    if !colon && plainly_a_name(host) {
        return None;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if colon {
        return None;
    }
    match url::Host::parse(host).ok()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(canonical(IpAddr::V6(ip))),
        url::Host::Domain(_) => None,
    }
}

/// A host the WHATWG parser cannot read as an address, seen without running
/// it (its IDNA pass was most of the cost of resolving a name per request):
/// it reads a host as IPv4 only when the last label "ends in a number" —
/// all digits, or `0x` hex. Percent signs and non-ASCII (fullwidth digits
/// map to ASCII ones) take the parser's path.
fn plainly_a_name(host: &str) -> bool {
    if !host.is_ascii() || host.contains('%') {
        return false;
    }
    // The last label, by a byte search: `rsplit('.')` is a char searcher,
    // ~100 instructions a request (docs/performance.md, "The sixteenth
    // pass"); `host` is ASCII here, so every index is a char boundary.
    let name = host.strip_suffix('.').unwrap_or(host);
    let last = name
        .bytes()
        .rposition(|b| b == b'.')
        .map_or(name, |i| &name[i + 1..]);
    let numberish = last.bytes().all(|b| b.is_ascii_digit())
        || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"));
    !numberish
}

/// IPv4 addresses carried in IPv6 (mapped, compatible, NAT64) are judged as
/// the IPv4 address they reach.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    // Deprecated IPv4-compatible ::a.b.c.d (not :: and ::1).
    if s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1) {
        return Some(tail());
    }
    None
}

/// Classes refused everywhere unless a CIDR opens them.
fn always_refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local / cloud metadata address"),
        // Alibaba Cloud's metadata service.
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(100, 100, 100, 200) => {
            Some("a cloud metadata address")
        }
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("a link-local address"),
        // AWS's IPv6 metadata endpoint.
        IpAddr::V6(v6) if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
            Some("a cloud metadata address")
        }
        _ => None,
    }
}

/// Addresses inside a host or a private network.
fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() || v4.is_unspecified() || o[0] == 0 {
                Some("a loopback / this-host address")
            } else if v4.is_private() {
                Some("a private address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("a multicast or reserved address")
            } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
                Some("a benchmarking address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() || v6.is_unspecified() {
                Some("a loopback / this-host address")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("a unique-local (private) address")
            } else if (first & 0xff00) == 0xff00 {
                Some("a multicast address")
            } else if (first & 0xffc0) == 0xfec0 {
                Some("a site-local address")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut never names a host that the URL parser reads as an
    /// address: random hosts from the pieces that make parsers disagree.
    #[test]
    fn a_plain_name_is_never_an_address_to_the_url_parser() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let pieces = [
            "a", "api", "test", ".", "0x", "0X", "7f", "127", "1", "0", "%31", "\u{ff11}", "-",
            "xn--", "ff", "08", "09", "e", "..",
        ];
        let mut names = 0;
        for _ in 0..50_000 {
            let host: String = (0..rng.gen_range(1..7))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            if !plainly_a_name(&host) {
                continue;
            }
            names += 1;
            assert!(
                !matches!(
                    url::Host::parse(&host),
                    Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_))
                ),
                "{host:?}"
            );
        }
        assert!(names > 1_000, "{names}");
        assert!(plainly_a_name("api.stripe.com"));
        for ip in [
            "127.1",
            "0x7f.1",
            "2130706433",
            "1.2.3.4.",
            "0xA9.0xFE.0xA9.0xFE",
        ] {
            assert!(!plainly_a_name(ip), "{ip}");
            assert!(literal_ip(ip).is_some(), "{ip}");
        }
    }

    fn egress(toml: &str) -> Egress {
        let config = Config::from_toml_str(toml, "t.toml").expect("config");
        Egress::with_own_ips(&config, vec!["10.1.2.3".parse().unwrap()])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_listeners_are_a_loop_on_every_local_address() {
        let e = egress("");
        for a in [
            "127.0.0.1:4001",
            "127.0.0.2:4000",
            "0.0.0.0:4001",
            "[::1]:4000",
            "[::]:4001",
            "[::ffff:127.0.0.1]:4001",
            "10.1.2.3:4000",
        ] {
            for p in [
                Purpose::Proxy,
                Purpose::Job,
                Purpose::Webhook,
                Purpose::Region,
            ] {
                assert!(
                    matches!(e.check_addr(p, "x", addr(a)), Err(Refusal::Loop(_))),
                    "{a} {p:?}"
                );
            }
        }
        // Other ports on loopback are not us (the proxy path may use them).
        assert_eq!(
            e.check_addr(Purpose::Proxy, "x", addr("127.0.0.1:4002")),
            Ok(())
        );
        // An allow-list never opens our own ports.
        let e = egress("[egress]\nallow = [\"127.0.0.0/8\"]\nallow_ports = [4001]\n");
        assert!(matches!(
            e.check_addr(Purpose::Job, "x", addr("127.0.0.1:4001")),
            Err(Refusal::Loop(_))
        ));
    }

    #[test]
    fn metadata_is_refused_everywhere_in_every_spelling() {
        let e = egress("");
        for host in [
            "169.254.169.254",
            "2852039166",
            "0xa9.0xfe.0xa9.0xfe",
            "0251.0376.0251.0376",
            "[::ffff:169.254.169.254]",
            "::ffff:a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "[fe80::1]",
            "fd00:ec2::254",
            "100.100.100.200",
            "metadata.google.internal",
            "METADATA.GOOGLE.INTERNAL.",
            "metadata",
        ] {
            for p in [Purpose::Proxy, Purpose::Job, Purpose::Webhook] {
                let r = e.check_name(p, host, 80);
                assert!(
                    matches!(r, Err(Refusal::Denied { .. })),
                    "{host} {p:?}: {r:?}"
                );
            }
        }
        // A name resolving to the metadata address, on the proxy path.
        assert!(e
            .check_addr(Purpose::Proxy, "evil.test", addr("169.254.169.254:80"))
            .is_err());
        // A host allow entry does not open it; a CIDR does.
        let e = egress("[egress]\nallow = [\"evil.test\"]\n");
        assert!(e
            .check_addr(Purpose::Proxy, "evil.test", addr("169.254.169.254:80"))
            .is_err());
        let e = egress("[egress]\nallow = [\"169.254.169.254/32\"]\n");
        assert_eq!(
            e.check_addr(Purpose::Proxy, "x", addr("169.254.169.254:80")),
            Ok(())
        );
    }

    #[test]
    fn jobs_and_webhooks_stay_on_the_public_web_by_default() {
        let e = egress("");
        for a in [
            "127.0.0.1:80",
            "0.0.0.0:80",
            "10.0.0.1:443",
            "172.16.5.4:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "[::1]:80",
            "[fd12::1]:443",
            "224.0.0.1:80",
            "255.255.255.255:80",
        ] {
            assert!(e.check_addr(Purpose::Job, "h", addr(a)).is_err(), "{a}");
            assert!(e.check_addr(Purpose::Webhook, "h", addr(a)).is_err(), "{a}");
            assert_eq!(e.check_addr(Purpose::Proxy, "h", addr(a)), Ok(()), "{a}");
        }
        assert_eq!(
            e.check_addr(Purpose::Job, "h", addr("93.184.216.34:443")),
            Ok(())
        );
        for port in [22, 25, 8080, 6379] {
            let a = SocketAddr::new("93.184.216.34".parse().unwrap(), port);
            assert!(e.check_addr(Purpose::Job, "h", a).is_err(), "{port}");
            assert!(e.check_name(Purpose::Webhook, "h.test", port).is_err());
            assert_eq!(e.check_addr(Purpose::Proxy, "h", a), Ok(()));
        }
    }

    #[test]
    fn allow_and_deny() {
        let e = egress(
            "[egress]\nallow = [\"127.0.0.0/8\", \"*.svc.local\"]\nallow_ports = [8080]\ndeny = [\"127.0.0.9\", \"bad.svc.local\", \"*.evil.test\"]\ndeny_ports = [25]\n",
        );
        assert_eq!(
            e.check_addr(Purpose::Job, "h", addr("127.0.0.1:8080")),
            Ok(())
        );
        assert!(e
            .check_addr(Purpose::Job, "h", addr("127.0.0.1:8081"))
            .is_err());
        assert_eq!(
            e.check_addr(Purpose::Webhook, "api.svc.local", addr("10.9.9.9:443")),
            Ok(())
        );
        // Deny beats allow, everywhere.
        for p in [Purpose::Proxy, Purpose::Job] {
            assert!(e.check_addr(p, "h", addr("127.0.0.9:8080")).is_err());
            assert!(e.check_name(p, "bad.svc.local", 443).is_err());
            assert!(e.check_name(p, "a.b.evil.test", 443).is_err());
            assert!(e.check_name(p, "x.test", 25).is_err());
        }
        assert_eq!(e.check_name(Purpose::Proxy, "evil.test", 443), Ok(()));
    }

    #[test]
    fn urls() {
        let e = egress("");
        assert!(e
            .check_url(Purpose::Job, "http://169.254.169.254/latest")
            .is_err());
        assert!(e.check_url(Purpose::Job, "http://2852039166/").is_err());
        assert!(e
            .check_url(Purpose::Webhook, "http://[::ffff:169.254.169.254]/hook")
            .is_err());
        assert!(e
            .check_url(Purpose::Job, "http://127.0.0.1:4001/api")
            .is_err());
        assert!(e.check_url(Purpose::Job, "https://api.test:22/").is_err());
        assert!(e.check_url(Purpose::Job, "https://api.test/v1").is_ok());
        assert!(e.check_url(Purpose::Job, "http://0.0.0.0/").is_err());
        assert!(e.check_url(Purpose::Job, "nope").is_err());
    }

    #[test]
    fn regions_only_check_the_loop() {
        let e = egress("");
        assert_eq!(
            e.check_addr(Purpose::Region, "r", addr("10.0.0.5:4000")),
            Ok(())
        );
        assert_eq!(e.check_name(Purpose::Region, "peer.internal", 4000), Ok(()));
        assert!(e
            .check_addr(Purpose::Region, "r", addr("127.0.0.1:4000"))
            .is_err());
    }
}
