//! The live hub's starting map: every device's newest stored fix, so bounding-box filters
//! place devices that have not moved since the start.

use anyhow::Context;
use fieldline_dashboard::live::Hub;
use fieldline_store::Store;

pub async fn seed_positions(store: &dyn Store, hub: &Hub) -> anyhow::Result<()> {
    let devices = store
        .devices()
        .await
        .context("cannot read the devices' newest positions")?;
    hub.seed_positions(devices.into_iter().filter_map(|d| {
        let location = d.location?;
        Some((d.id, location["lat"].as_f64()?, location["lon"].as_f64()?))
    }));
    Ok(())
}
