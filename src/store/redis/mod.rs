//! The Redis backend (`[storage] backend = "redis"`): the state N replicas
//! share so they behave as one proxy (docs/distributed.md).

pub mod conn;
pub mod store;

pub use conn::Redis;
pub use store::RedisStore;
