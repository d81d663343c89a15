//! The broker's hand-over, live: the pipeline takes what connections hand over until the
//! service stops, then drains what the closing tap still holds.

use std::time::Duration;

use fieldline_broker::TapReceiver;

use super::handover::feed;
use crate::Pipeline;

/// Feeds the pipeline until `shutdown` completes, then closes the tap and drains it; returns
/// the pipeline with its last batch handed to the writer.
pub async fn run(
    mut pipeline: Pipeline,
    mut tap_rx: TapReceiver,
    shutdown: impl std::future::Future<Output = ()>,
    on_tick: impl Fn(),
) -> Pipeline {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(msg) = tap_rx.recv() => feed(&mut pipeline, msg).await,
            _ = tick.tick() => {
                pipeline.flush_if_due().await;
                on_tick();
            }
        }
    }
    tracing::info!("shutting down: refusing new publishes, storing everything accepted");
    // Closing waits for connections that are mid-hand-over, which may need the pipeline to
    // make room; so keep draining while it runs.
    let mut closed = tokio::task::spawn_blocking(tap_rx.closer());
    loop {
        tokio::select! {
            _ = &mut closed => break,
            Some(msg) = tap_rx.recv() => feed(&mut pipeline, msg).await,
        }
    }
    while let Some(msg) = tap_rx.try_recv() {
        feed(&mut pipeline, msg).await;
    }
    pipeline.flush().await;
    pipeline
}
