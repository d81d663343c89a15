//! The live hub: every accepted event, numbered and fanned out to live-view clients at once.
//!
//! The pipeline publishes each accepted document to the [`Hub`] on its own task; the hub gives
//! it a [`Position`], keeps it in a bounded history for resume, and pushes it into the queue of
//! each client whose [`Filter`] matches (device filters are indexed, so a client watching one
//! truck costs nothing for the rest of the fleet). Clients drain their own queue; one that
//! lags has its location and telemetry conflated to the newest per device, and one that stalls
//! for good is cut off. Nothing here ever waits for a client.

mod event;
mod filter;
mod hub;
mod position;
mod queue;

pub use event::{LiveEvent, Payload};
pub use filter::{Filter, FilterError};
pub use hub::{Hub, HubSettings, Outgoing, Subscription};
pub use position::{BadPosition, Position};
