//! The process' own resource use, under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes` ...), read from `/proc` at
//! scrape time. Elsewhere than Linux there are none.

/// Clock ticks per second in `/proc` times: the kernel's `USER_HZ`, 100 on every architecture
/// Linux exports it for (it is part of the ABI, unlike `HZ`).
const USER_HZ: f64 = 100.0;

/// What one scrape read.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files, unless unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// One process gauge or counter, as it is exposed.
#[derive(Debug)]
pub(crate) struct ProcessSample {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub value: f64,
}

impl ProcessStats {
    /// Reads the current process' numbers; `None` when `/proc` cannot be read.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Self::parse(&stat, &status, &boot, &limits, open_fds)
    }

    /// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and `/proc/self/limits`.
    fn parse(stat: &str, status: &str, boot: &str, limits: &str, open_fds: u64) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces and parentheses:
        // fields are counted after the last `)`, starting with field 3 (the state).
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let ticks = field(14)? + field(15)?;
        let started_ticks = field(22)?;
        let virtual_bytes = field(23)?;
        let resident_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let boot_time: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())?;
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok());
        Some(Self {
            cpu_seconds: ticks as f64 / USER_HZ,
            resident_bytes: resident_kib * 1024,
            virtual_bytes,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + started_ticks as f64 / USER_HZ,
        })
    }

    /// The samples, in exposition order.
    pub fn samples(&self) -> Vec<ProcessSample> {
        let sample = |name, help, counter, value| ProcessSample {
            name,
            help,
            counter,
            value,
        };
        let mut samples = vec![
            sample(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                true,
                self.cpu_seconds,
            ),
            sample(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                false,
                self.resident_bytes as f64,
            ),
            sample(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                false,
                self.virtual_bytes as f64,
            ),
            sample(
                "process_open_fds",
                "Number of open file descriptors",
                false,
                self.open_fds as f64,
            ),
        ];
        if let Some(max) = self.max_fds {
            samples.push(sample(
                "process_max_fds",
                "Maximum number of open file descriptors",
                false,
                max as f64,
            ));
        }
        samples.push(sample(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            false,
            self.start_time_seconds,
        ));
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (metaprotocol (x) y) S 1 4242 4242 0 -1 4194560 2380 0 0 0 150 50 0 0 20 0 9 0 123400 917504000 4263 18446744073709551615";
        let status = "Name:\tproxy\nVmRSS:\t   17052 kB\nThreads:\t9\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 99\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 1048576              files\n";
        let parsed = ProcessStats::parse(stat, status, boot, limits, 12);
        assert_eq!(
            parsed,
            Some(ProcessStats {
                cpu_seconds: 2.0,
                resident_bytes: 17052 * 1024,
                virtual_bytes: 917_504_000,
                open_fds: 12,
                max_fds: Some(1024),
                start_time_seconds: 1_700_000_000.0 + 1234.0,
            })
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads() {
        let stats = ProcessStats::read();
        assert!(stats.as_ref().is_some_and(|s| {
            s.open_fds > 0
                && s.resident_bytes > 0
                && s.start_time_seconds > 1e9
                && s.start_time_seconds
                    <= std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
        }));
    }
}
