//! Small services every layer uses: the log, child processes, file locks, XDG paths, copying trees.

pub mod copy_tree;
pub mod exit;
pub mod lock;
pub mod log;
pub mod process;
pub mod xdg;
