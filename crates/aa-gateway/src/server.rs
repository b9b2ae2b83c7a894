//! Running the gateway: gRPC and HTTP on listeners the caller bound (port 0 in tests), the
//! checkpoint timer (which also records approval expiries), and a clean stop when `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;

use aa_background::Background;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::grpc::GrpcApi;
use crate::http;
use crate::store::Store;

/// Serves `gateway` until `shutdown` resolves, then signs a last checkpoint. Appends run on a
/// background thread below the others (`GatewayConfig::append_priority`).
pub async fn run<S: Store>(
    grpc: TcpListener,
    http: TcpListener,
    gateway: Arc<Gateway<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let appends = Background::start("aa-gw-appends", gateway.config().append_priority)
        .map_err(|e| GatewayError::Setup(format!("the appends' thread: {e}")))?;
    let appends = Arc::new(appends);
    let (stop_tx, stop_rx) = watch::channel(false);
    let closing = Arc::clone(&gateway);
    tokio::spawn(async move {
        shutdown.await;
        closing.close();
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let checkpoints = tokio::spawn(checkpoint_loop(
        Arc::clone(&gateway),
        stopped(stop_rx.clone()),
    ));
    let grpc_server = tonic::transport::Server::builder()
        .add_routes(GrpcApi::new(Arc::clone(&gateway), Arc::clone(&appends)).routes())
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let http_server = axum::serve(http, http::router(Arc::clone(&gateway)))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
    let _ = checkpoints.await;
    // The server answered every append before it returned. Stopping the thread waits for
    // blocking work under way, which would hold up this async thread meanwhile.
    let _ = tokio::task::spawn_blocking(move || drop(appends)).await;
    grpc_result.map_err(|e| GatewayError::Setup(format!("gRPC server: {e}")))?;
    http_result.map_err(|e| GatewayError::Setup(format!("HTTP server: {e}")))?;
    gateway.checkpoint().await?;
    Ok(())
}

async fn checkpoint_loop<S: Store>(gateway: Arc<Gateway<S>>, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(gateway.config().checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {
                // Expiries first, so the checkpoint covers their audit events.
                if let Err(error) = gateway.expire_approvals().await {
                    tracing::error!(%error, "approval expiry sweep failed");
                }
                if let Err(error) = gateway.checkpoint().await {
                    tracing::error!(%error, "checkpoint failed");
                }
            }
        }
    }
}
