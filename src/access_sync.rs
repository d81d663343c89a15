//! Keeps the broker's guard and the API's token table in step with the access registry in
//! storage.
//!
//! The registry changes from the admin API (in this process, which rings at once) and from
//! the CLI (another process). Both take the next access revision, so polling that one number
//! every two seconds and loading only newer rows is cheap and misses nothing.

use std::sync::Arc;
use std::time::Duration;

use fieldline_broker::{DeviceAccess, Guard};
use fieldline_dashboard::auth::ApiAccess;
use fieldline_store::AccessChanges;
use fieldline_store::{Store, StoreError};

/// How often the registry's revision is read.
const POLL: Duration = Duration::from_secs(2);

/// Loads the whole registry; returns the revision it reflects.
pub async fn load(store: &dyn Store, guard: &Guard, api: &ApiAccess) -> Result<i64, StoreError> {
    let changes = store.access_changes(0).await?;
    Ok(apply(changes, guard, api))
}

/// Follows the registry from `revision` on, forever.
pub async fn follow(
    store: Arc<dyn Store>,
    guard: Arc<Guard>,
    api: Arc<ApiAccess>,
    mut revision: i64,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = api.wait_registry_changed() => {}
        }
        let newest = match store.access_revision().await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the access registry; keeping the last copy");
                continue;
            }
        };
        if newest == revision {
            continue;
        }
        match store.access_changes(revision).await {
            Ok(changes) => revision = apply(changes, &guard, &api),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read access registry changes; keeping the last copy")
            }
        }
    }
}

fn apply(changes: AccessChanges, guard: &Guard, api: &ApiAccess) -> i64 {
    if !changes.devices.is_empty() || !changes.tokens.is_empty() {
        tracing::info!(
            devices = changes.devices.len(),
            tokens = changes.tokens.len(),
            revision = changes.revision,
            "access registry loaded"
        );
    }
    guard.apply(changes.devices.into_iter().map(|d| DeviceAccess {
        device: d.device,
        secret_hash: d.secret_hash,
        enabled: d.enabled,
    }));
    api.apply(changes.tokens);
    api.applied(changes.revision);
    changes.revision
}
