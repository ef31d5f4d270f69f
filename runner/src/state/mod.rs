//! Kept VM state (`-K`): per-test, per-node state dirs that outlive a run, locked and tagged with the node's
//! identity.

mod identity;
mod kept;

pub use kept::{prepare, KeepOptions, KeptState, NodeSpec};
