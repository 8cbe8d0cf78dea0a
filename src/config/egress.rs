//! `[egress]`: the entries users add to the built-in egress policy. The
//! policy's rules live in `crate::egress`; this only turns the file's strings
//! into typed rules, naming the entry that does not parse.

use std::net::IpAddr;

use super::load::Ctx;
use super::raw::RawEgress;
use super::{ConfigError, EgressConfig, EgressRule};

/// A CIDR, or one IP (as `/32` or `/128`).
pub(super) fn net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| bare.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// One `allow` / `deny` entry: a CIDR or IP, a host name, or `*.suffix`.
fn rule(s: &str) -> Option<EgressRule> {
    if let Some(n) = net(s) {
        return Some(EgressRule::Net(n));
    }
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('.').unwrap_or(&s);
    let (wild, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    Some(if wild {
        EgressRule::Suffix(format!(".{name}"))
    } else {
        EgressRule::Host(name.to_string())
    })
}

fn rules(cx: &Ctx, key: &str, v: &Option<Vec<String>>) -> Result<Vec<EgressRule>, ConfigError> {
    v.iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            rule(s).ok_or_else(|| {
                cx.err(
                    format!("{key}[{i}]"),
                    format!(
                        "expected a CIDR (\"10.0.0.0/8\"), an IP, a host name or \"*.example.com\", got {s:?}"
                    ),
                )
            })
        })
        .collect()
}

/// A port (`8080`) or an inclusive range (`"30000-32767"`).
fn port_range(v: &toml::Value) -> Option<(u16, u16)> {
    let port = |n: i64| u16::try_from(n).ok().filter(|p| *p > 0);
    match v {
        toml::Value::Integer(n) => port(*n).map(|p| (p, p)),
        toml::Value::String(s) => {
            let (lo, hi) = s.trim().split_once('-')?;
            let lo = port(lo.trim().parse().ok()?)?;
            let hi = port(hi.trim().parse().ok()?)?;
            (lo <= hi).then_some((lo, hi))
        }
        _ => None,
    }
}

fn ports(
    cx: &Ctx,
    key: &str,
    v: &Option<Vec<toml::Value>>,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    v.iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            port_range(p).ok_or_else(|| {
                cx.err(
                    format!("{key}[{i}]"),
                    format!("must be a port 1-65535 or a range like \"30000-32767\", got {p}"),
                )
            })
        })
        .collect()
}

pub(super) fn parse(cx: &Ctx, raw: &RawEgress) -> Result<EgressConfig, ConfigError> {
    Ok(EgressConfig {
        allow: rules(cx, "egress.allow", &raw.allow)?,
        allow_ports: ports(cx, "egress.allow_ports", &raw.allow_ports)?,
        deny: rules(cx, "egress.deny", &raw.deny)?,
        deny_ports: ports(cx, "egress.deny_ports", &raw.deny_ports)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(
            rule("10.0.0.0/8"),
            Some(EgressRule::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            rule("10.1.2.3/8"),
            Some(EgressRule::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            rule("[::1]"),
            Some(EgressRule::Net("::1/128".parse().unwrap()))
        );
        assert_eq!(
            rule("Internal.Example."),
            Some(EgressRule::Host("internal.example".into()))
        );
        assert_eq!(
            rule("*.svc.cluster.local"),
            Some(EgressRule::Suffix(".svc.cluster.local".into()))
        );
        for bad in ["", "*.", "a..b", "http://x", "a b", "10.0.0.0/33x", "*"] {
            assert_eq!(rule(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_entry() {
        let err = crate::config::Config::from_toml_str(
            "[egress]\nallow = [\"127.0.0.0/8\", \"not a host\"]\n",
            "e.toml",
        )
        .unwrap_err();
        assert_eq!(err.key, "egress.allow[1]");
        let err = crate::config::Config::from_toml_str(
            "[egress]\nallow_ports = [8080, 70000]\n",
            "e.toml",
        )
        .unwrap_err();
        assert_eq!(err.key, "egress.allow_ports[1]");
        let c = crate::config::Config::from_toml_str(
            "[egress]\nallow = [\"127.0.0.1\"]\ndeny = [\"*.bad.test\"]\ndeny_ports = [25]\n",
            "e.toml",
        )
        .unwrap();
        assert_eq!(c.egress.deny_ports, vec![(25, 25)]);
        assert_eq!(c.egress.allow.len(), 1);
        let c = crate::config::Config::from_toml_str(
            "[egress]\nallow_ports = [8080, \"30000-32767\"]\n",
            "e.toml",
        )
        .unwrap();
        assert_eq!(c.egress.allow_ports, vec![(8080, 8080), (30000, 32767)]);
        for bad in ["\"9-8\"", "\"0-9\"", "\"1-70000\"", "\"x\"", "1.5", "-1"] {
            let err = crate::config::Config::from_toml_str(
                &format!("[egress]\ndeny_ports = [{bad}]\n"),
                "e.toml",
            )
            .unwrap_err();
            assert_eq!(err.key, "egress.deny_ports[0]", "{bad}");
        }
    }
}
