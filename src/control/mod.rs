//! The control listener (axum): `/healthz`, `/readyz`, `/ca.pem`, `/metrics`.
//!
//! CONTRACT: `pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>,
//! shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()>`
//! and `pub fn router(shared: Arc<Shared>) -> axum::Router`.
