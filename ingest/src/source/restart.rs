//! What a restart leaves behind: devices storage still has online, although no connection
//! outlives the process.

use std::sync::Arc;
use std::time::SystemTime;

use fieldline_broker::presence::Change;
use fieldline_broker::wal::Wal;
use fieldline_broker::DisconnectReason;
use fieldline_store::time_format::epoch_ms;
use fieldline_store::{Store, StoreError};

use super::handover::presence_change;
use crate::Pipeline;

/// Every device storage still has online gets its offline status (reason `dropped`) like any
/// other end of a connection. Logged first when there is a log, so storage, live views and
/// the history rebuilt at the next start agree. Returns how many devices it ended.
pub(super) async fn end_presence_left_by_restart(
    pipeline: &mut Pipeline,
    store: &dyn Store,
    wal: Option<&Arc<Wal>>,
) -> Result<usize, StoreError> {
    let devices = store.online_devices().await?;
    for device in &devices {
        let change = Change::Ended {
            device: Arc::from(device.as_str()),
            offline: true,
            reason: DisconnectReason::Dropped,
            will: None,
        };
        let now = SystemTime::now();
        let position = wal.and_then(|wal| {
            change
                .append_to(wal, epoch_ms(now))
                // A full disk must not stop the start: stored without a log position.
                .map_err(|e| tracing::warn!(error = %e, device = %device, "cannot log the offline status a restart causes"))
                .ok()
        });
        pipeline
            .presence(&presence_change(&change), now, position)
            .await;
    }
    // Stored before any client asks: the REST API says offline from the first request.
    pipeline.flush_and_wait_stored().await;
    Ok(devices.len())
}
