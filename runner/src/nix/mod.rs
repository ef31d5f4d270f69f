//! Nix: evaluating tests to plans (`nix eval`) and building what they need (`nix build`).

pub mod command;
pub mod eval;
pub mod realise;
