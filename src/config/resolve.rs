//! `[resolve]`: static host -> IP overrides.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::load::{quoted, valid_host, Ctx};
use super::ConfigError;

pub(super) fn build(
    cx: &Ctx,
    raw: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, IpAddr>, ConfigError> {
    let mut resolve = BTreeMap::new();
    for (host, ip) in raw {
        let key = format!("resolve.{}", quoted(host));
        let h = host.trim().to_ascii_lowercase();
        if !valid_host(&h) {
            return Err(cx.err(key, "expected a host name"));
        }
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| cx.err(&key, format!("expected an IP address, got {ip:?}")))?;
        resolve.insert(h, ip);
    }
    Ok(resolve)
}
