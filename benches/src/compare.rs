//! The comparison table of `benches/compare.sh`: load-generator reports, labelled with `layout`,
//! `target` and `round`, turned into one markdown row per case (layout, protocol, load,
//! payload), each cell listing the targets in the order they first appear, with the medians over
//! the rounds (peak memory: the largest; errors: the sum). The CPU that others used on the
//! machine during the runs says how far to trust the row. Runs that counted system calls
//! (`loadgen --syscalls`) add a column of the proxy's system calls per call. Runs that measured
//! where the host had put the two cores (`loadgen --cores-probe`, see [`crate::cores`]) are told
//! apart by it: when a case's runs found the cores placed more than one way, its row of all runs
//! is followed by one of its runs on near cores, one on far ones and one on cores the host moved
//! during the run, since the same code costs more on far cores.

use std::fmt::Write as _;
use std::num::NonZeroU64;

use crate::report::{ProcessUse, Report};
use crate::wire::Protocol;

/// The target the others are compared with.
pub const REFERENCE: &str = "haproxy";
/// The watched process that is the proxy under test.
pub const PROXY_PROCESS: &str = "proxy";
/// The watched process that is the echo server.
pub const ECHO_PROCESS: &str = "echo";

/// A round trip between the cores this many times the smallest of all the runs' or more is one
/// between far cores: on the host measured, near cores took 50-111 ns and far ones 310-530.
const FAR: f64 = 2.5;

/// What identifies a row.
#[derive(Debug, Clone, PartialEq)]
struct Case {
    layout: String,
    protocol: Protocol,
    connections: usize,
    outstanding: usize,
    payload: usize,
    calls_per_write: Option<NonZeroU64>,
}

impl Case {
    fn of(report: &Report) -> Self {
        Self {
            layout: label(report, "layout").to_owned(),
            protocol: report.protocol,
            connections: report.connections,
            outstanding: report.outstanding,
            payload: report.payload,
            calls_per_write: report.calls_per_write,
        }
    }
}

/// A row: the runs of a case, all of them or those on cores placed one way.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    case: Case,
    /// `None`: every run of the case.
    placement: Option<Placement>,
}

impl Row {
    /// The rows of `reports`, in the order their cases first appear: a row for each case (named
    /// for the cores' placement if all its runs found the same), and when its runs found the
    /// cores placed more than one way, a row for each way after it.
    /// Round trips are read against `nearest`, the smallest of all the runs'.
    fn all(reports: &[Report], nearest: Option<f64>) -> Vec<Self> {
        let mut rows: Vec<Self> = Vec::new();
        for report in reports {
            let case = Case::of(report);
            if !rows.iter().any(|row| row.case == case) {
                let of_case: Vec<Option<Placement>> = reports
                    .iter()
                    .filter(|r| Case::of(r) == case)
                    .map(|r| Placement::of(r, nearest))
                    .collect();
                let mut placements: Vec<Placement> = of_case.iter().flatten().copied().collect();
                placements.sort();
                placements.dedup();
                // Every run on cores placed the same way: one row, named for it.
                let one_way = of_case.iter().all(Option::is_some) && placements.len() == 1;
                rows.push(Self {
                    case: case.clone(),
                    placement: placements.first().copied().filter(|_| one_way),
                });
                if placements.len() > 1 {
                    rows.extend(placements.into_iter().map(|placement| Self {
                        case: case.clone(),
                        placement: Some(placement),
                    }));
                }
            }
        }
        rows
    }

    fn holds(&self, report: &Report, nearest: Option<f64>) -> bool {
        Case::of(report) == self.case
            && self
                .placement
                .is_none_or(|placement| Placement::of(report, nearest) == Some(placement))
    }
}

/// Where the host had the two cores during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Placement {
    /// Both round trips, before and after the run, under [`FAR`] times the nearest.
    Near,
    /// Both at or over it.
    Far,
    /// One of each: the host moved a core during the run.
    Moved,
}

impl Placement {
    /// Where `report`'s run found the cores, read against `nearest`, the smallest round trip of
    /// all the runs; `None` for a run that did not probe them (or no run did).
    fn of(report: &Report, nearest: Option<f64>) -> Option<Self> {
        let (apart, nearest) = (report.cores_apart?, nearest?);
        let far = |ns: f64| ns >= FAR * nearest;
        Some(match (far(apart.before_ns?), far(apart.after_ns?)) {
            (false, false) => Self::Near,
            (true, true) => Self::Far,
            _ => Self::Moved,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Near => "near",
            Self::Far => "far",
            Self::Moved => "moved",
        }
    }
}

/// The round trips between the cores measured in `reports`.
fn round_trips<'a>(reports: impl Iterator<Item = &'a Report>) -> impl Iterator<Item = f64> {
    reports
        .filter_map(|r| r.cores_apart)
        .flat_map(|apart| [apart.before_ns, apart.after_ns])
        .flatten()
}

fn label<'a>(report: &'a Report, key: &str) -> &'a str {
    report.labels.get(key).map_or("-", String::as_str)
}

/// The markdown table of `reports`.
pub fn table(reports: &[Report]) -> String {
    let nearest = round_trips(reports.iter()).reduce(f64::min);
    let rows = Row::all(reports, nearest);
    let mut targets: Vec<&str> = Vec::new();
    for report in reports {
        let target = label(report, "target");
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    let names = targets.join(" / ");
    // System calls were counted in these runs (`loadgen --syscalls`): a column of them.
    let counted = reports
        .iter()
        .flat_map(|r| &r.processes)
        .any(|p| p.syscalls_per_call.is_some());
    let syscalls_head = if counted {
        format!(" proxy syscalls/call: {names} |")
    } else {
        String::new()
    };
    // The cores' round trips were measured (`loadgen --cores-probe`): a column of them.
    let cores_head = if nearest.is_some() {
        " cores: round trip ns |"
    } else {
        ""
    };
    let mut out = format!(
        "| layout | protocol | conns x outstanding | payload B |{cores_head} rps: {names} | rps / {REFERENCE}: {names} \
         | p50 us: {names} | p99 us: {names} | proxy CPU us/call: {names} \
         | proxy CPU / {REFERENCE}: {names} | echo CPU us/call: {names} \
         | proxy peak RSS MiB: {names} | others' CPU %: {names} |{syscalls_head} errors |\n"
    );
    // The separator row, one cell a column of the header.
    let columns = out.matches('|').count() - 1;
    out.push_str(&"|---".repeat(columns));
    out.push_str("|\n");
    for row in &rows {
        let case = &row.case;
        let runs = |target: &str| -> Vec<&Report> {
            reports
                .iter()
                .filter(|r| row.holds(r, nearest) && label(r, "target") == target)
                .collect()
        };
        let per_target = |value: &dyn Fn(&[&Report]) -> Option<f64>, digits: usize| {
            targets
                .iter()
                .map(|target| cell(value(&runs(target)), digits))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let rps = |runs: &[&Report]| median(runs.iter().map(|r| r.rps));
        let proxy_cpu =
            |runs: &[&Report]| median(process(runs, PROXY_PROCESS, |p| p.cpu_us_per_call));
        // Each target's `value` over the reference's.
        let to_reference = |value: &dyn Fn(&[&Report]) -> Option<f64>| {
            let reference = value(&runs(REFERENCE)).filter(|&reference| reference > 0.0);
            per_target(&|runs| Some(value(runs)? / reference?), 2)
        };
        let errors: u64 = reports
            .iter()
            .filter(|r| row.holds(r, nearest))
            .map(|r| r.errors)
            .sum();
        let cores = if nearest.is_some() {
            let of_row = || round_trips(reports.iter().filter(|r| row.holds(r, nearest)));
            let range = of_row().reduce(f64::min).zip(of_row().reduce(f64::max));
            let placement = row.placement.map_or("all", Placement::name);
            match range {
                Some((low, high)) => format!(" {placement}, {low:.0}-{high:.0} |"),
                None => " - |".to_owned(),
            }
        } else {
            String::new()
        };
        let per_write = case
            .calls_per_write
            .map_or(String::new(), |n| format!(", {n} per write"));
        let syscalls = if counted {
            let per_call = per_target(
                &|runs| median(process(runs, PROXY_PROCESS, |p| p.syscalls_per_call)),
                2,
            );
            format!(" {per_call} |")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} x {}{per_write} | {} |{cores} {} | {} | {} | {} | {} | {} | {} | {} | {} |{syscalls} {errors} |",
            case.layout,
            case.protocol,
            case.connections,
            case.outstanding,
            case.payload,
            per_target(&rps, 0),
            to_reference(&rps),
            per_target(&|runs| median(runs.iter().map(|r| r.latency_us.p50)), 0),
            per_target(&|runs| median(runs.iter().map(|r| r.latency_us.p99)), 0),
            per_target(&proxy_cpu, 1),
            to_reference(&proxy_cpu),
            per_target(
                &|runs| median(process(runs, ECHO_PROCESS, |p| p.cpu_us_per_call)),
                1
            ),
            per_target(
                &|runs| {
                    process(runs, PROXY_PROCESS, |p| {
                        p.peak_rss_kib.map(|kib| kib as f64 / 1024.0)
                    })
                    .reduce(f64::max)
                },
                1
            ),
            per_target(
                &|runs| median(runs.iter().filter_map(|r| r.others_cpu_percent)),
                0
            ),
        );
    }
    out
}

/// One value of the watched process `name` in each run that has it.
fn process<'a>(
    runs: &'a [&Report],
    name: &'a str,
    value: impl Fn(&ProcessUse) -> Option<f64> + 'a,
) -> impl Iterator<Item = f64> + 'a {
    runs.iter()
        .flat_map(|r| &r.processes)
        .filter(move |p| p.name == name)
        .filter_map(value)
}

/// The median, the mean of the middle two for an even count.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[mid]),
        _ => Some((values[mid - 1] + values[mid]) / 2.0),
    }
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cores::CoresApart;
    use crate::load::Errors;
    use crate::report::Latency;

    fn report(target: &str, rps: f64, proxy_cpu: Option<f64>) -> Report {
        let labels: BTreeMap<String, String> = [("layout", "b"), ("target", target)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let processes = proxy_cpu
            .map(|cpu| ProcessUse {
                name: PROXY_PROCESS.to_owned(),
                pid: 1,
                cpu_us_per_call: Some(cpu),
                cpu_percent: None,
                peak_rss_kib: Some(2048),
                syscalls_per_call: None,
            })
            .into_iter()
            .collect();
        Report {
            labels,
            protocol: Protocol::Thrift,
            connections: 8,
            outstanding: 64,
            rate: None,
            payload: 32,
            calls_per_write: None,
            seconds: 1.0,
            calls: rps as u64,
            rps,
            errors: 0,
            error_kinds: Errors::default(),
            behind: 0,
            failure: None,
            latency_us: Latency::default(),
            processes,
            others_cpu_percent: Some(3.0),
            cores_apart: None,
        }
    }

    #[test]
    fn one_row_per_case_with_medians_and_ratios() {
        let reports = [
            report("direct", 100.0, None),
            report("haproxy", 80.0, Some(9.0)),
            report("metaprotocol", 40.0, Some(20.0)),
            report("haproxy", 100.0, Some(7.0)),
            report("metaprotocol", 50.0, Some(22.0)),
            report("haproxy", 90.0, Some(8.0)),
            report("metaprotocol", 45.0, Some(24.0)),
        ];
        let table = table(&reports);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(rows[0].contains("rps: direct / haproxy / metaprotocol"));
        let row = rows[2];
        assert!(
            row.starts_with("| b | thrift | 8 x 64 | 32 | 100 / 90 / 45 | 1.11 / 1.00 / 0.50 |"),
            "{row}"
        );
        assert!(
            row.contains("| - / 8.0 / 22.0 | - / 1.00 / 2.75 |"),
            "{row}"
        );
        assert!(row.contains("| - / 2.0 / 2.0 | 3 / 3 / 3 | 0 |"), "{row}");
        assert!(!rows[0].contains("syscalls"), "none were counted: {table}");
    }

    #[test]
    fn counted_system_calls_get_a_column() {
        let mut reports = [
            report("haproxy", 80.0, Some(9.0)),
            report("metaprotocol", 40.0, Some(20.0)),
            report("metaprotocol", 50.0, Some(22.0)),
        ];
        for (report, syscalls) in reports.iter_mut().zip([2.5, 0.5, 0.7]) {
            report.processes[0].syscalls_per_call = Some(syscalls);
        }
        let table = table(&reports);
        let rows: Vec<&str> = table.lines().collect();
        assert!(
            rows[0].ends_with("| proxy syscalls/call: haproxy / metaprotocol | errors |"),
            "{table}"
        );
        let columns = |row: &str| row.matches('|').count();
        assert_eq!(columns(rows[1]), columns(rows[0]), "{table}");
        assert!(rows[2].ends_with("| 2.50 / 0.60 | 0 |"), "{table}");
    }

    #[test]
    fn runs_on_near_far_and_moved_cores_get_rows_of_their_own() {
        let probed = |target: &str, cpu: f64, before_ns: f64, after_ns: f64| {
            let mut report = report(target, 100.0, Some(cpu));
            report.cores_apart = Some(CoresApart {
                before_ns: Some(before_ns),
                after_ns: Some(after_ns),
            });
            report
        };
        let reports = [
            probed("haproxy", 50.0, 60.0, 55.0),
            probed("metaprotocol", 40.0, 52.0, 70.0),
            probed("haproxy", 58.0, 340.0, 360.0),
            probed("metaprotocol", 66.0, 350.0, 330.0),
            probed("metaprotocol", 55.0, 60.0, 350.0),
        ];
        let table = table(&reports);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 6, "{table}");
        assert!(
            rows[0].contains("| payload B | cores: round trip ns | rps:"),
            "{table}"
        );
        let columns = |row: &str| row.matches('|').count();
        assert!(
            rows.iter().all(|row| columns(row) == columns(rows[0])),
            "{table}"
        );
        // All the case's runs, then each placement's, read against haproxy's on cores as far
        // apart.
        assert!(rows[2].contains("| 32 | all, 52-360 |"), "{table}");
        assert!(rows[2].contains("| 54.0 / 55.0 | 1.00 / 1.02 |"), "{table}");
        assert!(rows[3].contains("| 32 | near, 52-70 |"), "{table}");
        assert!(rows[3].contains("| 50.0 / 40.0 | 1.00 / 0.80 |"), "{table}");
        assert!(rows[4].contains("| 32 | far, 330-360 |"), "{table}");
        assert!(rows[4].contains("| 58.0 / 66.0 | 1.00 / 1.14 |"), "{table}");
        assert!(rows[5].contains("| 32 | moved, 60-350 |"), "{table}");
        assert!(rows[5].contains("| - / 55.0 | - / - |"), "{table}");
        // Runs on cores placed one way only: one row.
        let near = &reports[..2];
        let table = super::table(near);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("| 32 | near, 52-70 |"), "{table}");
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
