//! Working an alarm: acknowledge, clear, assign, annotate. Storage records each change with
//! who and when, and its `alarm` event, in one transaction; the event then goes to live views
//! and webhooks like every stored event. (Alarms open and clear with their rule's alerts, in
//! the batch that stores them: see `fieldline_store::alarms`.)

use std::sync::Arc;

use fieldline_store::alarms::{AlarmAction, AlarmRecord, AlarmRefused};
use fieldline_store::time_format::now_ms;
use fieldline_store::Store;

use crate::events::EventFeed;

pub struct AlarmDesk {
    store: Arc<dyn Store>,
    events: Arc<dyn EventFeed>,
}

impl AlarmDesk {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn EventFeed>) -> Arc<AlarmDesk> {
        Arc::new(AlarmDesk { store, events })
    }

    /// Takes `action` on alarm `id` for `by` (a token's name); the alarm as it is after.
    pub async fn act(
        &self,
        id: i64,
        action: AlarmAction,
        by: &str,
    ) -> Result<AlarmRecord, AlarmRefused> {
        let (alarm, event) = self.store.act(id, &action, by, now_ms()).await?;
        if let Some(event) = event {
            metrics::counter!("fieldline_events_total", "kind" => "alarm").increment(1);
            self.events.committed(&[event]);
        }
        Ok(alarm)
    }
}
