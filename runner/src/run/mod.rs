//! Running tests: side by side within the machine's budget, each through the result cache, with its report.

pub mod cached;
pub mod execute;
pub mod options;
pub mod report;
pub mod schedule;
