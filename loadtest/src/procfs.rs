//! CPU time and resident memory of a process and its descendants, from
//! `/proc`.
//!
//! CPU time is the sum over every thread of the first field of
//! `/proc/PID/task/TID/schedstat` (nanoseconds on CPU) — the same quantity as
//! `utime + stime` in `/proc/PID/stat`, without its 10 ms tick granularity.
//! Where schedstat is unavailable, `utime + stime` is used.

use std::fs;

/// The process and its live descendants (nginx workers, uvicorn workers…).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let Ok(dir) = fs::read_dir("/proc") else {
        return all;
    };
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some(ppid) =
                stat_fields(&stat).and_then(|f| f.get(1).and_then(|v| v.parse::<u32>().ok()))
        {
            parents.push((p, ppid));
        }
    }
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for &(p, pp) in &parents {
            if pp == parent && !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

/// Fields of `/proc/PID/stat` after the `(comm)`: index 0 is the state,
/// 1 the ppid, 11 utime, 12 stime.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// Nanoseconds on CPU of one process (all its threads).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Ok(s) = fs::read_to_string(e.path().join("schedstat"))
                && let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                any = true;
            }
        }
    }
    if any {
        return Some(total);
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat)?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / hz)
}

/// Nanoseconds on CPU of a process tree.
pub fn tree_cpu_ns(pid: u32) -> u64 {
    tree(pid).into_iter().filter_map(cpu_ns).sum()
}

/// CPU time spent busy by the whole machine (all CPUs; user, nice and
/// system — not irq/softirq, which may be our own loopback traffic, nor idle,
/// iowait or steal), from `/proc/stat`, in ns.
pub fn machine_busy_ns() -> u64 {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = s.lines().next() else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 3 {
        return 0;
    }
    let ticks = f[0] + f[1] + f[2];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

/// Context switches (voluntary and not) of every thread of one process.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Context switches of every thread of a process tree.
pub fn tree_ctx_switches(pid: u32) -> u64 {
    tree(pid).into_iter().map(ctx_switches).sum()
}

/// VmRSS of one process, in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// VmRSS of a process tree, in kB.
pub fn tree_rss_kb(pid: u32) -> u64 {
    tree(pid).into_iter().filter_map(rss_kb).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_measurable() {
        let me = std::process::id();
        assert!(cpu_ns(me).is_some());
        assert!(rss_kb(me).unwrap() > 0);
        assert!(tree(me).contains(&me));
        std::thread::yield_now();
        assert!(ctx_switches(me) > 0);
    }
}
