//! OpenLineage events: every run of the transformer emits START, then
//! COMPLETE or FAIL (the archiver's moves and restores alike), with the
//! datasets read and written and their facets (`event.rs`), delivered over
//! HTTP or to an NDJSON file without ever making a run wait (`emit.rs`).
//! `[lineage]` in the configuration chooses the transport; off by default.

mod emit;
pub mod event;
mod naming;

pub use emit::Emitter;
pub use event::{Dataset, EventType, RunEvent};
pub use naming::dataset_of;
