//! Whether KVM really works on this host, and the argument that keeps a start script off it when it does not.
//!
//! NixOS start scripts leave the choice to QEMU (`-machine accel=kvm:tcg`, or the `qemu-kvm` binary), and QEMU takes
//! KVM whenever `/dev/kvm` opens. That is not enough: nested virtualisation without `vmx`/`svm` (PVM, for one) gives
//! a `/dev/kvm` under which a stock kernel is still in early boot after minutes, where TCG boots it in seconds. So
//! the runner decides, and when KVM does not really work it appends `-machine accel=tcg`, which QEMU merges over
//! the script's earlier `-machine` (later properties win). testrig's test guest honours the same argument.

use std::sync::OnceLock;

/// Why TCG was chosen, for messages.
pub const KVM_NOT_REAL: &str =
    "KVM does not really work here (no usable /dev/kvm, or an x86 CPU without vmx/svm)";

/// The accelerator VMs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// This host's accelerator, decided once per run: `TESTRIG_ACCEL` (`kvm` or `tcg`) when set, else KVM when
/// `/dev/kvm` is readable and writable and the CPU has `vmx` or `svm`, else TCG.
pub fn host_accel() -> Accel {
    static DECIDED: OnceLock<Accel> = OnceLock::new();
    *DECIDED.get_or_init(|| {
        let forced = std::env::var("TESTRIG_ACCEL").ok().filter(|v| !v.is_empty());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let x86 = matches!(std::env::consts::ARCH, "x86_64" | "x86");
        let accel = decide(forced.as_deref(), kvm_device_usable(), x86, &cpuinfo);
        match (accel, forced) {
            (_, Some(forced)) => tracing::debug!("accelerator {accel:?}, as TESTRIG_ACCEL={forced} says"),
            (Accel::Kvm, None) => tracing::debug!("KVM works here: VMs run under KVM"),
            (Accel::Tcg, None) => tracing::info!(
                "{KVM_NOT_REAL}: VMs run under TCG, which is much slower (TESTRIG_ACCEL=kvm overrides)"
            ),
        }
        accel
    })
}

/// What is appended to every start script after the driver's arguments.
pub fn start_script_args(accel: Accel) -> Vec<String> {
    match accel {
        Accel::Kvm => Vec::new(),
        Accel::Tcg => vec!["-machine".into(), "accel=tcg".into()],
    }
}

/// On x86 the CPU must show `vmx` or `svm`: nested virtualisation without them (PVM) offers a `/dev/kvm` that crawls.
/// Other architectures list no such flag in /proc/cpuinfo (aarch64 has "Features"), so the device decides there.
fn decide(forced: Option<&str>, device_usable: bool, x86: bool, cpuinfo: &str) -> Accel {
    match forced {
        Some("kvm") => return Accel::Kvm,
        Some("tcg") => return Accel::Tcg,
        Some(other) => tracing::warn!("TESTRIG_ACCEL={other} is neither kvm nor tcg; ignored"),
        None => {}
    }
    let hardware = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        });
    if device_usable && (hardware || !x86) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_VMX: &str = "processor : 0\nflags : fpu vme vmx sse2\n";
    const WITHOUT: &str = "processor : 0\nflags : fpu vme sse2 hypervisor\n";

    #[test]
    fn kvm_only_with_the_device_and_hardware_support() {
        assert_eq!(decide(None, true, true, WITH_VMX), Accel::Kvm);
        assert_eq!(decide(None, true, true, "flags : svm\n"), Accel::Kvm);
        // /dev/kvm without vmx/svm: nested without hardware support (PVM), which crawls.
        assert_eq!(decide(None, true, true, WITHOUT), Accel::Tcg);
        assert_eq!(decide(None, false, true, WITH_VMX), Accel::Tcg);
        // aarch64: no vmx/svm flags to look for; a usable /dev/kvm is KVM.
        let aarch64 = "processor : 0\nFeatures : fp asimd evtstrm aes\n";
        assert_eq!(decide(None, true, false, aarch64), Accel::Kvm);
        assert_eq!(decide(None, false, false, aarch64), Accel::Tcg);
        // "vmx" must be a flag, not part of another word.
        assert_eq!(decide(None, true, true, "flags : vmxfoo\n"), Accel::Tcg);
    }

    #[test]
    fn testrig_accel_overrides() {
        assert_eq!(decide(Some("kvm"), false, true, WITHOUT), Accel::Kvm);
        assert_eq!(decide(Some("tcg"), true, true, WITH_VMX), Accel::Tcg);
        assert_eq!(decide(Some("fast"), true, true, WITH_VMX), Accel::Kvm);
    }

    #[test]
    fn tcg_is_forced_with_a_machine_property() {
        assert!(start_script_args(Accel::Kvm).is_empty());
        assert_eq!(start_script_args(Accel::Tcg), ["-machine", "accel=tcg"]);
    }
}
