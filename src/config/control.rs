//! `[control]`: the control listener and its API keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::load::{addr, Ctx};
use super::raw::RawControl;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// default 127.0.0.1:4001
    pub listen: SocketAddr,
    /// bearer token -> workspace
    pub api_keys: BTreeMap<String, String>,
}

pub(super) fn build(cx: &Ctx, c: &RawControl) -> Result<ControlConfig, ConfigError> {
    let listen = match &c.listen {
        Some(v) => addr(cx, "control.listen", v)?,
        None => SocketAddr::from(([127, 0, 0, 1], 4001)),
    };
    for (token, ws) in &c.api_keys {
        if token.trim().is_empty() || ws.trim().is_empty() {
            return Err(cx.err(
                "control.api_keys",
                "tokens and workspace names must not be empty",
            ));
        }
    }
    Ok(ControlConfig {
        listen,
        api_keys: c.api_keys.clone(),
    })
}
