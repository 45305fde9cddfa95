//! Replays the golden captures and the fuzz corpus through every fuzz check, as a plain test on
//! stable Rust without libFuzzer: the cheap mode for CI (`cargo test --no-default-features`).
//!
//! Golden captures come from the repository's `testdata/golden/{dubbo,thrift,brpc}/*.hex`; each
//! feeds its codec's decode check as it is, and its
//! round-trip check with a set of edits covering every encoding and a mutation that sets,
//! replaces and removes headers. Whatever `fuzz/corpus/<target>/` holds (after a fuzzing run, or
//! `seed-corpus.sh`) is replayed through its target's check too, and so is every input fuzzing
//! once failed on, committed in `fuzz/regressions/<target>/`, and every seed committed in
//! `fuzz/seeds/<target>/`: those of a target that has no golden captures (JSON-RPC), and frames
//! no capture holds (Dubbo calls in fastjson2).

use std::path::{Path, PathBuf};

use metaprotocol_fuzz::route::RouteCase;
use metaprotocol_fuzz::{Edit, RoundTrip};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A codec's checks: its name in the golden folder and the targets' names.
struct Checks {
    protocol: &'static str,
    decode: fn(&[u8]),
    round_trip: fn(&RoundTrip<'_>),
}

const CHECKS: [Checks; 3] = [
    Checks {
        protocol: "dubbo",
        decode: metaprotocol_fuzz::dubbo::decode,
        round_trip: metaprotocol_fuzz::dubbo::round_trip,
    },
    Checks {
        protocol: "thrift",
        decode: metaprotocol_fuzz::thrift::decode,
        round_trip: metaprotocol_fuzz::thrift::round_trip,
    },
    Checks {
        protocol: "brpc",
        decode: metaprotocol_fuzz::brpc::decode,
        round_trip: metaprotocol_fuzz::brpc::round_trip,
    },
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

/// The files of `dir` (none if it does not exist), sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The edits every golden stream is forwarded with.
fn edits() -> Vec<Edit> {
    let mut edits = Vec::new();
    for variant in 0..6 {
        edits.push(Edit::new(variant.into(), variant, &[], &[]));
        edits.push(Edit::new(
            u64::MAX - u64::from(variant),
            variant,
            &[
                ("x-routed-by", "canary"),
                ("tenant", "t2"),
                ("method", "nope"),
            ],
            &["x-trace-id", "interface"],
        ));
        // A route renaming the service (Dubbo sets the call's path field too).
        edits.push(Edit::new(
            variant.into(),
            variant,
            &[("path", "demo.Renamed")],
            &[],
        ));
    }
    edits
}

#[test]
fn golden_captures_pass_every_check() -> TestResult {
    for checks in &CHECKS {
        let dir = golden_dir().join(checks.protocol);
        let captures: Vec<PathBuf> = files(&dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "hex"))
            .collect();
        assert!(
            !captures.is_empty(),
            "no golden captures in {}",
            dir.display()
        );
        for path in captures {
            let stream = hex::decode(std::fs::read_to_string(&path)?.trim())?;
            println!("{}", path.display());
            (checks.decode)(&stream);
            for edit in edits() {
                (checks.round_trip)(&RoundTrip {
                    stream: &stream,
                    edit,
                });
            }
        }
    }
    Ok(())
}

#[test]
fn the_corpus_passes_its_targets_checks() -> TestResult {
    replay(&Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"))?;
    Ok(())
}

/// Inputs fuzzing once failed on, kept in `regressions/<target>/`, and seeds for what the
/// golden captures lack, in `seeds/<target>/` (both committed, unlike the corpus).
#[test]
fn committed_regressions_and_seeds_pass_their_targets_checks() -> TestResult {
    for dir in ["regressions", "seeds"] {
        let replayed = replay(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))?;
        assert!(replayed > 0, "nothing replayed from {dir}/");
    }
    Ok(())
}

/// Replays the files of `root/<target>/` through their targets' checks; how many it replayed.
fn replay(root: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let mut replayed = 0;
    let mut each = |dir: &str, check: &mut dyn FnMut(&[u8])| -> Result<(), std::io::Error> {
        for path in files(&root.join(dir))? {
            println!("{}", path.display());
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                // A fuzzer running meanwhile replaces the corpus's files as it shrinks them.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            check(&data);
            replayed += 1;
        }
        Ok(())
    };
    for checks in &CHECKS {
        each(&format!("{}_decode", checks.protocol), &mut |data| {
            (checks.decode)(data)
        })?;
        each(&format!("{}_round_trip", checks.protocol), &mut |data| {
            if let Ok(input) = RoundTrip::from_bytes(data) {
                (checks.round_trip)(&input);
            }
        })?;
    }
    each("jsonrpc_decode", &mut metaprotocol_fuzz::jsonrpc::decode)?;
    each("config_parse", &mut metaprotocol_fuzz::config::parse)?;
    each("route_match", &mut |data| {
        if let Ok(case) = RouteCase::from_bytes(data) {
            metaprotocol_fuzz::route::check(&case);
        }
    })?;
    Ok(replayed)
}

/// Route cases from a fixed stream of pseudo-random bytes: without a corpus, the route check
/// still runs on tables of every kind, and both matches and misses occur.
#[test]
fn generated_route_cases_pass_the_route_check() -> TestResult {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_byte = || {
        // xorshift64: any fixed sequence will do; this one is cheap and spreads its bits.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    };
    let (mut matched, mut missed) = (0, 0);
    for _ in 0..500 {
        let data: Vec<u8> = (0..256).map(|_| next_byte()).collect();
        let case = RouteCase::from_bytes(&data)?;
        match metaprotocol_fuzz::route::check(&case) {
            Some(_) => matched += 1,
            None => missed += 1,
        }
    }
    assert!(
        matched > 50 && missed > 50,
        "{matched} matched, {missed} missed"
    );
    Ok(())
}

/// The YAML examples of the config reference and the README, and each of them cut short at every
/// line: whole documents that build, and broken ones whose errors must point inside them.
#[test]
fn documented_configs_pass_the_config_check() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut examples = Vec::new();
    for doc in ["docs/config.md", "README.md"] {
        examples.extend(yaml_blocks(&std::fs::read_to_string(root.join(doc))?));
    }
    assert!(examples.len() >= 5, "only {} YAML examples", examples.len());
    for example in &examples {
        metaprotocol_fuzz::config::parse(example.as_bytes());
        for (cut, _) in example.match_indices('\n') {
            metaprotocol_fuzz::config::parse(&example.as_bytes()[..cut]);
        }
    }
    Ok(())
}

/// The contents of the ```yaml blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            None => {}
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}
