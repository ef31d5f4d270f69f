//! Plans: from what the user named to a plan that can run.

pub mod load;
