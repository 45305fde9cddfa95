//! The interop suites under `tests/interop/<suite>/`: scripts driving real implementations,
//! whose tools `setup.sh` there installs. Without the tools a test is skipped, unless
//! `METAPROTOCOL_REQUIRE_INTEROP=1` (as in CI) makes it fail.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use super::TestResult;

/// One folder under `tests/interop/`.
pub struct Suite(&'static str);

impl Suite {
    /// The suite in `tests/interop/<name>/`.
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The suite's folder.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/interop")
            .join(self.0)
    }

    /// The interpreter of the virtualenv `setup.sh` makes.
    pub fn venv_python(&self) -> PathBuf {
        self.dir().join(".venv/bin/python")
    }

    /// The venv's interpreter when `setup.sh` made one, else `python3` from the path.
    pub fn python(&self) -> PathBuf {
        let venv = self.venv_python();
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    }

    /// `program` to be run in the suite's folder, where its scripts are.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.dir());
        command
    }

    /// `Ok(true)` when nothing is `missing`; otherwise `Ok(false)` (the caller skips its test,
    /// saying so) or, when `METAPROTOCOL_REQUIRE_INTEROP` is `1`, an error.
    pub fn ready(&self, missing: Option<String>) -> TestResult<bool> {
        let setup = format!("examples/tests/interop/{}/setup.sh", self.0);
        ready(missing, &setup)
    }
}

/// `Ok(true)` when nothing is `missing`; otherwise `Ok(false)` (the caller skips its test, saying
/// that `setup` installs what is missing) or, when `METAPROTOCOL_REQUIRE_INTEROP` is `1`, an
/// error.
pub fn ready(missing: Option<String>, setup: &str) -> TestResult<bool> {
    let Some(missing) = missing else {
        return Ok(true);
    };
    let why = format!("{missing}: run {setup}");
    if std::env::var("METAPROTOCOL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        return Err(format!("METAPROTOCOL_REQUIRE_INTEROP=1 but {why}").into());
    }
    println!("skipped: {why}");
    Ok(false)
}
