//! Asynchronous DNS with a cache, plus `[resolve]` static overrides.
//!
//! CONTRACT: `Resolver::new(&Config) -> Result<Resolver, ResolveInitError>`;
//! `Resolver::resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>` (async; IP
//! literals returned as-is, overrides first, then cached lookups).
