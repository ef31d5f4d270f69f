//! A QEMU machine of a test, driven through NixOS's guest protocol.

mod accel;
mod console;
mod error;
mod handle;
mod interact;
mod monitor;
mod ocr;
mod qmp;
mod shell;
mod vm;
mod waits;

pub use accel::{host_accel, Accel, KVM_NOT_REAL};
pub use error::{OpError, OpResult};
pub use handle::{Machine, Timeouts};
pub use ocr::NOT_ENABLED as OCR_NOT_ENABLED;
pub use shell::shell_quote;
pub use vm::VmConfig;
