//! `[regions.NAME]`: peer proxies a request may be rerouted through.

use std::collections::BTreeMap;

use super::load::{quoted, Ctx};
use super::raw::RawRegion;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// `http://host:port` of the peer proxy.
    pub proxy: String,
}

pub(super) fn build(
    cx: &Ctx,
    raw: &BTreeMap<String, RawRegion>,
) -> Result<BTreeMap<String, RegionConfig>, ConfigError> {
    let mut regions = BTreeMap::new();
    for (name, r) in raw {
        let key = format!("regions.{}", quoted(name));
        if name == "local" {
            return Err(cx.err(
                key,
                "\"local\" is the built-in region (direct connections) and cannot be redefined",
            ));
        }
        let Some(proxy) = &r.proxy else {
            return Err(cx.err(
                format!("{key}.proxy"),
                "is required: the http://host:port of the peer proxy",
            ));
        };
        let ok = proxy
            .parse::<http::Uri>()
            .ok()
            .filter(|u| {
                u.scheme_str() == Some("http")
                    && u.port_u16().is_some()
                    && u.host().is_some_and(|h| !h.is_empty())
            })
            .is_some();
        if !ok {
            return Err(cx.err(
                format!("{key}.proxy"),
                format!("expected http://host:port, got {proxy:?}"),
            ));
        }
        regions.insert(
            name.clone(),
            RegionConfig {
                proxy: proxy.clone(),
            },
        );
    }
    Ok(regions)
}
