//! The current set of fences or of rules: replaced whole when the API changes one, and picked
//! up by the judges at their next document (a version number tells them, without a lock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub struct Catalog<T> {
    current: RwLock<Arc<T>>,
    version: AtomicU64,
}

impl<T> Catalog<T> {
    pub fn new(set: T) -> Arc<Catalog<T>> {
        Arc::new(Catalog {
            current: RwLock::new(Arc::new(set)),
            version: AtomicU64::new(1),
        })
    }

    pub fn replace(&self, set: T) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(set);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current set and its version.
    pub fn snapshot(&self) -> (u64, Arc<T>) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        (self.version(), current.clone())
    }
}

use crate::alerts::{AlertRule, AlertRules};
use crate::geofence::{Fence, Fences};
use fieldline_store::{Definitions, EventStore, StoreError};

/// The stored geofences, indexed. One that no longer reads (stored by an older version with
/// other rules) is left out and logged, rather than stopping the service. Reading and
/// indexing thousands of fences takes a while: it runs off the async workers.
pub async fn load_fences(store: &dyn EventStore) -> Result<Fences, StoreError> {
    let stored = store.definitions(Definitions::Geofences).await?;
    let read = move || index_fences(stored);
    match tokio::task::spawn_blocking(read).await {
        Ok(fences) => Ok(fences),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down, when nothing judges any more.
        Err(_) => Ok(Fences::default()),
    }
}

fn index_fences(stored: Vec<fieldline_store::Definition>) -> Fences {
    let mut fences = Vec::new();
    for d in stored {
        let parsed = serde_json::from_str(&d.body)
            .map_err(|e| e.to_string())
            .and_then(|v| Fence::from_stored(d.id, &v).map_err(|e| e.0));
        match parsed {
            Ok(fence) => fences.push(fence),
            Err(e) => tracing::error!(geofence = d.id, error = %e, "stored geofence left out"),
        }
    }
    metrics::gauge!("fieldline_geofences_loaded").set(fences.len() as f64);
    Fences::new(fences)
}

/// The stored alert rules; as [`load_fences`].
pub async fn load_rules(store: &dyn EventStore) -> Result<AlertRules, StoreError> {
    let mut rules = Vec::new();
    for d in store.definitions(Definitions::AlertRules).await? {
        let parsed = serde_json::from_str(&d.body)
            .map_err(|e| e.to_string())
            .and_then(|v| AlertRule::from_json(d.id, &v).map_err(|e| e.0));
        match parsed {
            Ok(rule) => rules.push(rule),
            Err(e) => tracing::error!(rule = d.id, error = %e, "stored alert rule left out"),
        }
    }
    metrics::gauge!("fieldline_alert_rules_loaded").set(rules.len() as f64);
    Ok(AlertRules(rules))
}
