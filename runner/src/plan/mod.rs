//! Plans: from what the user named to a plan that can run.

pub mod from_nix;
pub mod load;
pub mod sources;
