//! The ingest pipeline: what devices publish, turned into stored rows.
//!
//! The stages follow the data: [`topic`] says who sent what kind of document, [`decode`] turns
//! a payload into validated [`document`]s (or [`rejection`]s with reasons), [`dedupe`] drops
//! redelivered sequence numbers, [`batch`] gathers rows, and the [`writer`] hands batches to a
//! [`store`]. [`pipeline`] runs those stages over the messages the broker hands over.

pub mod batch;
pub mod decode;
pub mod dedupe;
pub mod document;
pub mod pipeline;
pub mod rejection;
pub mod store;
pub mod time_format;
pub mod topic;
pub mod writer;

pub use pipeline::{Pipeline, PipelineSettings};
pub use store::{open_store, Store, StoreError};
