//! Geofence and alert judging at start-up: the fences and rules storage holds, each device's
//! state with them, and the stored events the live history is rebuilt with.

use std::sync::Arc;

use anyhow::Context;
use fieldline_dashboard::live::Hub;
use fieldline_ingest::alerts::AlertRules;
use fieldline_ingest::events::catalog::{load_fences, load_rules, Catalog};
use fieldline_ingest::events::judges::Judges;
use fieldline_ingest::geofence::Fences;
use fieldline_store::EventQuery;
use fieldline_store::Store;

pub struct Loaded {
    pub fences: Arc<Catalog<Fences>>,
    pub rules: Arc<Catalog<AlertRules>>,
    pub judges: Judges,
}

pub async fn load(store: &dyn Store) -> anyhow::Result<Loaded> {
    let fences = Catalog::new(
        load_fences(store)
            .await
            .context("cannot read the geofences")?,
    );
    let rules = Catalog::new(
        load_rules(store)
            .await
            .context("cannot read the alert rules")?,
    );
    let seed = store
        .judge_seed()
        .await
        .context("cannot read the devices' geofence and rule states")?;
    tracing::info!(
        geofences = fences.snapshot().1.len(),
        rules = rules.snapshot().1.len(),
        states = seed.states.len(),
        "geofences and alert rules loaded"
    );
    let judges = Judges::new(fences.clone(), rules.clone(), seed);
    Ok(Loaded {
        fences,
        rules,
        judges,
    })
}

/// Gives the hub the stored events its history should hold: with a log from `first_position`
/// on, those its records caused (up to `max` of the newest), placed as the replay reaches
/// them; without one, none, and the outbox cursor starts at the newest stored event.
pub async fn start_live_outbox(
    store: &dyn Store,
    hub: &Hub,
    first_position: Option<u64>,
    max: usize,
) -> anyhow::Result<()> {
    let last = store
        .last_event_seq()
        .await
        .context("cannot read the newest stored event")?;
    let Some(first_position) = first_position else {
        hub.start_outbox(last, Vec::new());
        return Ok(());
    };
    let max = u32::try_from(max.max(1)).unwrap_or(u32::MAX);
    let recent = store
        .events(&EventQuery {
            after_seq: last.saturating_sub(u64::from(max)),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: max,
            ..EventQuery::default()
        })
        .await
        .context("cannot read the stored events for the live history")?;
    // Events caused by records the log no longer has stay out, as those records' own do.
    let kept: Vec<_> = recent
        .into_iter()
        .skip_while(|e| e.log_position.is_none_or(|p| p < first_position))
        .map(Arc::new)
        .collect();
    let floor = kept.first().map_or(last, |e| e.seq - 1);
    hub.start_outbox(floor, kept);
    Ok(())
}
