//! testrig's test plan: the JSON document (`testrig-plan/1`) that the Nix plugin produces and the runner executes.
//!
//! The plan is a superset of nixpkgs' `driverConfiguration.json`, so a plan document is one of two shapes: a full
//! plan (with `"schema": "testrig-plan/1"`) or nixpkgs' file as it is (no `schema`). Both parse into [`Plan`].

mod bridge;
mod cache_key;
mod error;
mod facts;
mod parse;
mod plan;
mod validate;

pub use cache_key::{cache_key, sha256_hex};
pub use error::PlanError;
pub use facts::{plan_from_facts, plans_from_facts_set, PlanSet};
pub use parse::{parse_plan, ParsedPlan};
pub use plan::{python_identifier, Plan, Vm, DEFAULT_GLOBAL_TIMEOUT, SCHEMA};
