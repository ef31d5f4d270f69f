//! Running several tests at once within the machine's budget: the cores and memory their VMs ask for (a plan's
//! `cores` and `memory_mb`, nixpkgs' defaults otherwise, plus QEMU's own overhead), at most `--jobs` at a time, and
//! never two runs of the same test (same cache key, or same name and so the same kept state) side by side.

use std::collections::VecDeque;
use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::plan::load::LoadedPlan;

/// nixpkgs' `virtualisation.memorySize` default, for plans that do not say.
const DEFAULT_VM_MEMORY_MB: u64 = 1024;
/// What QEMU itself takes beside the guest's memory. Measured under TCG (tests/bench/RESULTS.md,
/// `qemu_rss_mib_1_node`): 307 MiB resident for a -m 256 guest that had touched about 80 MiB, 332 MiB for -m 1024
/// with about 170 MiB touched, so 165 to 225 MiB of translation cache and devices; under KVM it is less. Guest
/// memory is counted whole though rarely all touched, so the budget errs on the safe side.
const QEMU_OVERHEAD_MB: u64 = 200;
/// The share of the available memory tests may plan to use.
const MEMORY_SHARE_PERCENT: u64 = 80;

/// What one test asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub cores: u64,
    pub memory_mb: u64,
}

impl Cost {
    pub fn of(plan: &LoadedPlan) -> Self {
        plan.plan.vms.values().fold(
            Cost {
                cores: 0,
                memory_mb: 0,
            },
            |sum, vm| Cost {
                cores: sum.cores + u64::from(vm.cores.unwrap_or(1)),
                memory_mb: sum.memory_mb
                    + vm.memory_mb.map(u64::from).unwrap_or(DEFAULT_VM_MEMORY_MB)
                    + QEMU_OVERHEAD_MB,
            },
        )
    }
}

/// The machine's room for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub cores: u64,
    pub memory_mb: u64,
    pub jobs: usize,
}

impl Budget {
    /// This machine: its cores, a share of its available memory, and `jobs` (unlimited when `None`).
    pub fn of_machine(jobs: Option<u32>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let available_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(4096, |kb| kb / 1024);
        Budget {
            cores,
            memory_mb: available_mb * MEMORY_SHARE_PERCENT / 100,
            jobs: jobs.map_or(usize::MAX, |j| j as usize),
        }
    }
}

/// Runs `run(plan)` for every plan, as many at once as `budget` allows (a test too big for the budget still runs,
/// alone), and returns the results in the plans' order.
pub async fn run_all<'a, F, Fut>(plans: &'a [LoadedPlan], budget: Budget, run: F) -> Vec<u8>
where
    F: Fn(&'a LoadedPlan) -> Fut,
    Fut: Future<Output = u8> + 'a,
{
    let mut results = vec![0; plans.len()];
    let mut pending: VecDeque<usize> = (0..plans.len()).collect();
    let mut running: Vec<usize> = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while let Some(position) = pending
            .iter()
            .position(|&i| admits(plans, &running, i, budget))
        {
            let i = pending.remove(position).expect("position is in range");
            running.push(i);
            let fut = run(&plans[i]);
            in_flight.push(async move { (i, fut.await) });
        }
        let Some((done, code)) = in_flight.next().await else {
            break;
        };
        results[done] = code;
        running.retain(|&i| i != done);
    }
    results
}

/// Whether plan `candidate` may start beside the `running` ones.
fn admits(plans: &[LoadedPlan], running: &[usize], candidate: usize, budget: Budget) -> bool {
    let plan = &plans[candidate];
    let clashes = running
        .iter()
        .any(|&i| plans[i].cache_key == plan.cache_key || plans[i].name == plan.name);
    if clashes {
        return false;
    }
    if running.is_empty() {
        return true;
    }
    if running.len() >= budget.jobs {
        return false;
    }
    let used = running.iter().map(|&i| Cost::of(&plans[i])).fold(
        Cost {
            cores: 0,
            memory_mb: 0,
        },
        |a, b| Cost {
            cores: a.cores + b.cores,
            memory_mb: a.memory_mb + b.memory_mb,
        },
    );
    let cost = Cost::of(plan);
    used.cores + cost.cores <= budget.cores && used.memory_mb + cost.memory_mb <= budget.memory_mb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::time::Duration;

    fn plan(name: &str, key: &str, vms: &[(u32, u32)]) -> LoadedPlan {
        let vms: serde_json::Map<String, serde_json::Value> = vms
            .iter()
            .enumerate()
            .map(|(i, (cores, mem))| {
                let n = format!("m{i}");
                (n.clone(), serde_json::json!({"name": n, "start_script": "/s", "cores": cores, "memory_mb": mem}))
            })
            .collect();
        let text =
            serde_json::json!({"name": name, "test_script_text": "pass", "vms": vms}).to_string();
        let parsed = testrig_bridge::parse_plan(&text).unwrap();
        LoadedPlan {
            name: name.into(),
            plan: parsed.plan,
            test_script_text: "pass".into(),
            test_script_name: "testScript".into(),
            start_scripts: Default::default(),
            cache_key: key.into(),
            warnings: vec![],
        }
    }

    /// Runs the schedule with tests that take `ms` each and records the largest number running at once.
    fn peak(plans: &[LoadedPlan], budget: Budget) -> usize {
        let (now, peak) = (RefCell::new(0usize), RefCell::new(0usize));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt.block_on(run_all(plans, budget, |_| async {
            *now.borrow_mut() += 1;
            let current = *now.borrow();
            peak.replace_with(|p| (*p).max(current));
            tokio::time::sleep(Duration::from_millis(30)).await;
            *now.borrow_mut() -= 1;
            0
        }));
        assert_eq!(results.len(), plans.len());
        peak.into_inner()
    }

    const ROOMY: Budget = Budget {
        cores: 8,
        memory_mb: 64 * 1024,
        jobs: usize::MAX,
    };

    #[test]
    fn runs_side_by_side_within_cores_memory_and_jobs() {
        let plans: Vec<_> = (0..6)
            .map(|i| plan(&format!("t{i}"), &format!("k{i}"), &[(1, 256)]))
            .collect();
        assert_eq!(peak(&plans, ROOMY), 6);
        assert_eq!(peak(&plans, Budget { cores: 2, ..ROOMY }), 2);
        assert_eq!(
            peak(
                &plans,
                Budget {
                    memory_mb: 3 * 456,
                    ..ROOMY
                }
            ),
            3
        );
        assert_eq!(peak(&plans, Budget { jobs: 1, ..ROOMY }), 1);
    }

    #[test]
    fn a_test_too_big_for_the_budget_runs_alone_and_one_test_never_overlaps_itself() {
        let big = vec![
            plan("big", "k1", &[(4, 256)]),
            plan("small", "k2", &[(1, 256)]),
        ];
        assert_eq!(peak(&big, Budget { cores: 2, ..ROOMY }), 1);
        let same_key = vec![plan("a", "k", &[(1, 256)]), plan("b", "k", &[(1, 256)])];
        assert_eq!(peak(&same_key, ROOMY), 1);
        let same_name = vec![plan("a", "k1", &[(1, 256)]), plan("a", "k2", &[(1, 256)])];
        assert_eq!(peak(&same_name, ROOMY), 1);
    }
}
