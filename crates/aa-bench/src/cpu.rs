//! What the machine's processors did during a load, from the kernel's counters in
//! `/proc/stat`: how busy they were, and how much of the time the hypervisor gave their
//! turn to another guest (steal). On a shared virtual machine stolen time stalls whatever
//! was running, and a latency's tail follows it; the figure says how far to trust a run.
//! Also what one process used (`/proc/<pid>/stat` and its threads' `status`): its processor
//! time, which stolen time does not inflate, the cost of a check or an event where wall time
//! is too noisy to compare; and how often its threads were switched out. Each switch (a thread
//! that sleeps and is woken again) costs processor time of its own, on this kind of virtual
//! machine in the order of ten microseconds, so the count says how much of a check's cost is
//! waking up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// The processor time, user and system, that process `pid` (all its threads) has used so
/// far; `None` where `/proc` cannot tell.
pub fn process_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = process_ticks(&stat)?;
    let per_second = rustix::param::clock_ticks_per_second();
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// How many times each running thread of process `pid` has been switched out so far, waiting
/// (voluntary) or preempted, by thread id; `None` where `/proc` cannot tell.
pub fn thread_switches(pid: u32) -> Option<BTreeMap<u32, u64>> {
    let task = format!("/proc/{pid}/task");
    let mut counts = BTreeMap::new();
    for tid in thread_ids(&task)? {
        match std::fs::read_to_string(format!("{task}/{tid}/status")) {
            Ok(status) => {
                counts.insert(tid, switches_in(&status)?);
            }
            // The thread ended between the listing and the reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {}
            Err(_) => return None,
        }
    }
    Some(counts)
}

/// The ids in a `/proc/<pid>/task` listing. The kernel stops a listing early when the thread
/// it has reached ends as it is read, leaving out threads that run on (seen once: a test's
/// own thread missing while the harness's other threads ended), so the ids of three readings
/// are taken together: a thread that ended in between is then read as ended
/// ([`thread_switches`] skips it), and one left out of a reading is in another.
fn thread_ids(task: &str) -> Option<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        for entry in std::fs::read_dir(task).ok()? {
            ids.insert(entry.ok()?.file_name().to_str()?.parse().ok()?);
        }
    }
    Some(ids)
}

/// The switches of one process's threads between two readings: each thread's count at the
/// later one, less its count at the earlier (a thread started since counts whole). `None` if
/// a thread of the earlier reading has ended: its switches since would go uncounted, and a
/// short count would pass for a real one.
fn switches_between(earlier: &BTreeMap<u32, u64>, later: &BTreeMap<u32, u64>) -> Option<u64> {
    if earlier.keys().any(|tid| !later.contains_key(tid)) {
        return None;
    }
    later
        .iter()
        .map(|(tid, &count)| count.checked_sub(earlier.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// What one process used over a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Processor time, user and system.
    pub time: Duration,
    /// Context switches of its threads, where they could all be counted.
    pub switches: Option<u64>,
}

impl Used {
    /// This use shared over `count` requests or events.
    pub fn per(self, count: u64) -> UsedPer {
        let count = count.max(1) as f64;
        UsedPer {
            time: self.time.div_f64(count),
            switches: self.switches.map(|s| s as f64 / count),
        }
    }
}

/// What one process used per request or event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsedPer {
    /// Processor time.
    pub time: Duration,
    /// Context switches.
    pub switches: Option<f64>,
}

impl fmt::Display for UsedPer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::stats::micros(self.time))?;
        if let Some(switches) = self.switches {
            write!(f, "  {switches:.3} context switches")?;
        }
        Ok(())
    }
}

/// One process's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    name: &'static str,
    time: Option<Duration>,
    switches: Option<BTreeMap<u32, u64>>,
}

/// Several processes' use at one moment, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUse(Vec<Reading>);

impl ProcessUse {
    /// Each of `processes`' use so far.
    pub fn read(processes: &[(&'static str, u32)]) -> ProcessUse {
        ProcessUse(
            processes
                .iter()
                .map(|&(name, pid)| Reading {
                    name,
                    time: process_time(pid),
                    switches: thread_switches(pid),
                })
                .collect(),
        )
    }

    /// What each used from this reading until `later`; a process whose time either reading
    /// missed is left out, and its switches are unknown unless both readings counted every
    /// thread (see [`switches_between`]).
    pub fn until(&self, later: &ProcessUse) -> Vec<(&'static str, Used)> {
        self.0
            .iter()
            .zip(&later.0)
            .filter_map(|(before, after)| {
                let time = after.time?.checked_sub(before.time?)?;
                let switches = match (&before.switches, &after.switches) {
                    (Some(earlier), Some(later)) => switches_between(earlier, later),
                    _ => None,
                };
                Some((before.name, Used { time, switches }))
            })
            .collect()
    }
}

/// `voluntary_ctxt_switches` plus `nonvoluntary_ctxt_switches` from a thread's `status`.
fn switches_in(status: &str) -> Option<u64> {
    let count = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
    };
    Some(count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?)
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (second field) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis: `utime` and
/// `stime` are the 14th and 15th fields, the 12th and 13th after it.
fn process_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The kernel's cumulative time counters for all processors together, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    idle: u64,
    steal: u64,
    total: u64,
}

/// Shares of the processors' time between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Running anything, guest or kernel (stolen time excluded).
    pub busy: f64,
    /// Taken by the hypervisor for other guests.
    pub steal: f64,
}

impl CpuTimes {
    /// The counters now; `None` where `/proc/stat` is missing or unreadable.
    pub fn read() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The counters in the text of `/proc/stat`: its first line, `cpu  user nice system idle
    /// iowait irq softirq steal guest guest_nice`. Guest time is already counted in user and
    /// nice, so it is left out of the total.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let mut fields = stat.lines().next()?.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks.try_into().ok()?;
        Some(CpuTimes {
            idle: idle + iowait,
            steal,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
        })
    }

    /// The shares from this reading until `later`; zero when no tick passed.
    pub fn share_until(&self, later: &CpuTimes) -> CpuShare {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return CpuShare {
                busy: 0.0,
                steal: 0.0,
            };
        }
        let idle = later.idle.saturating_sub(self.idle);
        let steal = later.steal.saturating_sub(self.steal);
        CpuShare {
            busy: total.saturating_sub(idle + steal) as f64 / total as f64,
            steal: steal as f64 / total as f64,
        }
    }
}

impl fmt::Display for CpuShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "busy {:.0} %  stolen by the hypervisor {:.0} %",
            self.busy * 100.0,
            self.steal * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shares_come_from_the_first_line() {
        let before =
            CpuTimes::parse("cpu  100 0 50 800 10 0 0 40 7 0\ncpu0 1 2 3 4 5 6 7 8\n").unwrap();
        let after = CpuTimes::parse("cpu  160 0 70 880 20 0 10 100 9 0\n").unwrap();
        // 90 ticks of work (60 user, 20 system, 10 softirq), 90 idle (iowait too), 60
        // stolen; guest time (the ninth field) is inside user already.
        let share = before.share_until(&after);
        assert_eq!(after.total - before.total, 240);
        assert!((share.busy - 90.0 / 240.0).abs() < 1e-9, "{share:?}");
        assert!((share.steal - 60.0 / 240.0).abs() < 1e-9, "{share:?}");
    }

    #[test]
    fn a_process_time_is_read_past_its_name() {
        let stat = "4126 (aasm (x) y) S 4120 4120 2595 0 -1 4194560 2310 0 0 0 731 204 0 0 20 0 9";
        assert_eq!(process_ticks(stat), Some(935));
        assert_eq!(process_ticks("4126 (aasm) S 1 2"), None);
        // This process has used some time, and the kernel says how much.
        assert!(process_time(std::process::id()).is_some());
    }

    #[test]
    fn switches_are_both_kinds_added() {
        let status = "Name:\taasm\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches_in(status), Some(127));
        assert_eq!(
            switches_in("Name:\taasm\nvoluntary_ctxt_switches:\t120\n"),
            None
        );
        // The test harness's main thread has waited for this one, so it was switched out.
        let threads = thread_switches(std::process::id()).unwrap();
        assert!(threads.len() >= 2, "{threads:?}");
        assert!(threads.values().any(|&n| n > 0), "{threads:?}");
    }

    #[test]
    fn a_thread_that_ended_makes_the_switches_unknown() {
        let earlier = BTreeMap::from([(10, 5), (11, 7)]);
        // Thread 12 started since and counts whole.
        let later = BTreeMap::from([(10, 9), (11, 7), (12, 3)]);
        assert_eq!(switches_between(&earlier, &later), Some(7));
        let without_11 = BTreeMap::from([(10, 9), (12, 3)]);
        assert_eq!(switches_between(&earlier, &without_11), None);
        // A thread id reused by a newer thread with fewer switches is no count either.
        let reused = BTreeMap::from([(10, 9), (11, 2)]);
        assert_eq!(switches_between(&earlier, &reused), None);
    }

    #[test]
    fn use_is_shared_over_requests() {
        let used = Used {
            time: Duration::from_micros(300),
            switches: Some(9),
        };
        assert_eq!(used.per(4).to_string(), "75.0 µs  2.250 context switches");
        let unknown = Used {
            time: Duration::from_micros(300),
            switches: None,
        };
        assert_eq!(unknown.per(0).to_string(), "300.0 µs");
    }

    #[test]
    fn anything_else_is_no_reading() {
        assert_eq!(CpuTimes::parse(""), None);
        assert_eq!(CpuTimes::parse("intr 1 2 3"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8"), None);
        let reading = CpuTimes::parse("cpu  1 1 1 1 1 1 1 1").unwrap();
        assert_eq!(reading.share_until(&reading).busy, 0.0);
    }
}
