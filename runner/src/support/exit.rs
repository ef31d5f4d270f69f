//! testrig's exit statuses, in one place: scripts and CI jobs branch on them, so they are part of the interface
//! (README.md lists them).

/// Every test passed; for `testrig cache` and `testrig plan`, everything asked for was done.
pub const OK: u8 = 0;
/// A test failed or reached its global timeout; for `testrig cache`, an entry was not found or is in use.
pub const FAILED: u8 = 1;
/// Input testrig cannot use (a bad plan or flag, a failed evaluation or build), or an error that is not the test's:
/// the message names what was wrong. For `testrig cache`, the cache itself could not be read.
pub const BAD_INPUT: u8 = 2;
/// Stopped by SIGINT (128 + 2), as a shell reports it.
pub const SIGINT: u8 = 130;
/// Stopped by SIGTERM (128 + 15).
pub const SIGTERM: u8 = 143;
