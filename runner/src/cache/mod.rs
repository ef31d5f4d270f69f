//! The result cache: one entry per cache key, written atomically, read without locks.

mod entry;
mod gc;
mod humanize;
mod layout;
mod read;
mod staging;
mod store;
mod summary;

pub use entry::{outcome_of, subtests_of, Entry, EntryOutcome, FORMAT};
pub use gc::{collect as gc, Policy as GcPolicy, Reason as GcReason};
pub use humanize::{ago, duration, parse_duration, parse_size, size, utc};
pub use layout::EntryPaths;
pub use staging::Staging;
pub use store::{now_secs, Cache, Listed, Lookup};
pub use summary::cached_line;

#[cfg(test)]
mod tests;
