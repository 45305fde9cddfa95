//! The proxy's `/metrics` as a test reads it: samples of the Prometheus text format, and
//! `promtool check metrics` (Debian's `prometheus` package, which
//! `tests/interop/prometheus/setup.sh` installs) on it.

use std::io::Write;
use std::process::{Command, Stdio};

use super::TestResult;
use super::interop::Suite;

/// The suite whose `setup.sh` installs promtool.
const PROMETHEUS: Suite = Suite::new("prometheus");

/// The value of the sample of `name` whose labels include every pair of `labels` (summed over
/// the samples that match); 0 when none does.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            (sample_name == name).then_some((rest, value))
        })
        .filter(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Every family name (`# TYPE` lines) of an exposition.
pub fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// What `promtool check metrics` says about `text`: `Some(problems)` (empty when it accepts
/// it), or `None` when promtool is not installed and the test is skipped (an error when
/// `METAPROTOCOL_REQUIRE_INTEROP=1`).
pub fn promtool_problems(text: &str) -> TestResult<Option<Vec<String>>> {
    let installed = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !PROMETHEUS.ready((!installed).then(|| "promtool is not installed".to_owned()))? {
        return Ok(None);
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("promtool has no stdin")?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<String> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if output.status.success() != problems.is_empty() {
        return Err(format!("promtool exited {} saying: {said}", output.status).into());
    }
    Ok(Some(problems))
}
