//! The ingest pipeline: what devices publish, turned into stored rows.
//!
//! The stages follow the data: [`source`] takes what the broker hands over (connections as
//! they read, and the write-ahead log at start and when storage falls behind), [`topic`] says
//! who sent what kind of document, [`decode`] turns a payload into validated [`document`]s (or
//! [`rejection`]s with reasons), [`dedupe`] drops redelivered sequence numbers, the judges
//! ([`events`], with [`geofence`] and [`alerts`]) derive events, [`batch`] gathers rows, and
//! the [`writer`] hands batches to storage (`fieldline-store`). [`pipeline`] runs those stages,
//! turns the broker's device [`presence`] changes into status documents, and gives every
//! accepted document to the [`live`] feed as it is accepted. When storage falls behind, new
//! rows wait in the write-ahead log and the pipeline reads them back as the writer catches up
//! ([`spill`]). Beside the flow, [`webhook`] delivers stored events, [`commands`] takes commands to
//! devices, hands them to the broker and records replies, [`alarms`] records what people
//! do with the alarms alerts open, and [`channels`] sends alarm changes to people by email.

pub mod alarms;
pub mod alerts;
pub mod batch;
pub mod channels;
pub mod commands;
pub mod decode;
pub mod dedupe;
pub mod delivery_tasks;
pub mod document;
pub mod events;
pub mod geofence;
pub mod live;
pub mod owners;
pub mod pipeline;
pub mod presence;
pub mod rejection;
pub mod source;
pub mod spill;
pub mod topic;
pub mod webhook;
pub mod writer;

pub use live::{LiveFeed, NoLiveFeed, Origin};
pub use pipeline::{Pipeline, PipelineSettings, Role};
