//! What the configuration endpoints change: the fences and rules the judges use now, and the
//! running webhook and notification channel deliveries. A change is stored, then loaded back whole, so the judges see
//! exactly what storage holds; one change at a time.

use std::sync::Arc;

use fieldline_ingest::alerts::AlertRules;
use fieldline_ingest::channels::Channels;
use fieldline_ingest::events::catalog::{load_fences, load_rules, Catalog};
use fieldline_ingest::geofence::Fences;
use fieldline_ingest::webhook::Webhooks;
use fieldline_store::{Store, StoreError};

/// What a change touches, and so what is loaded back after it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Touches {
    Geofences,
    Rules,
    Webhooks,
    Channels,
}

pub struct Judging {
    pub fences: Arc<Catalog<Fences>>,
    pub rules: Arc<Catalog<AlertRules>>,
    pub webhooks: Arc<Webhooks>,
    pub channels: Arc<Channels>,
    changes: tokio::sync::Mutex<()>,
}

impl Judging {
    pub fn new(
        fences: Arc<Catalog<Fences>>,
        rules: Arc<Catalog<AlertRules>>,
        webhooks: Arc<Webhooks>,
        channels: Arc<Channels>,
    ) -> Arc<Judging> {
        Arc::new(Judging {
            fences,
            rules,
            webhooks,
            channels,
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs `change` against storage, then puts what storage now holds in force: once this
    /// returns, the next document is judged by it.
    pub async fn change<T>(
        &self,
        store: &dyn Store,
        touches: Touches,
        change: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let _one_at_a_time = self.changes.lock().await;
        let out = change.await?;
        match touches {
            Touches::Geofences => self.fences.replace(load_fences(store).await?),
            Touches::Rules => self.rules.replace(load_rules(store).await?),
            Touches::Webhooks => self.webhooks.sync().await?,
            Touches::Channels => self.channels.sync().await?,
        }
        Ok(out)
    }

    /// Puts in force what storage holds now for `touches` (changed elsewhere: another node's
    /// API), one at a time with the changes made here.
    pub async fn reload(&self, store: &dyn Store, touches: Touches) -> Result<(), StoreError> {
        self.change(store, touches, async { Ok(()) }).await
    }
}
