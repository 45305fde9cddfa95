use metaprotocol_core::{ByteStr, FilterDecision, LocalReplyKind};

use super::*;
use crate::filters::script::StateValue;
use crate::filters::script::testing::{
    TestResult, assert_fast_lane_and_seen, complete, config, context, counted, on_request, record,
    reply_kind, request,
};
use crate::stats::Metrics;

/// A filter in the ABI: refuses requests without `tenant`, copies it to `x-wasm`, steers
/// `lane=fast`, keeps `seen`; traps on `boom`, spins on `spin`, hoards memory on `hoard`;
/// counts `done` in `on_complete` when the state says `seen`.
const FILTER: &str = r#"
(module
  (import "metaprotocol" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "metaprotocol" "set" (func $set (param i32 i32 i32 i32 i32)))
  (import "metaprotocol" "reply" (func $reply (param i32 i32 i32 i32)))
  (import "metaprotocol" "count" (func $count (param i32 i32 i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "tenant")        ;; 0..6
  (data (i32.const 16) "unauthorized") ;; 16..28
  (data (i32.const 32) "no tenant")    ;; 32..41
  (data (i32.const 48) "x-wasm")       ;; 48..54
  (data (i32.const 64) "lane")         ;; 64..68
  (data (i32.const 72) "fast")         ;; 72..76
  (data (i32.const 80) "seen")         ;; 80..84
  (data (i32.const 88) "boom")         ;; 88..92
  (data (i32.const 96) "spin")         ;; 96..100
  (data (i32.const 104) "hoard")       ;; 104..109
  (data (i32.const 112) "done")        ;; 112..116
  (func $has (param $key i32) (param $len i32) (result i32)
    (i32.ne (call $get (i32.const 0) (local.get $key) (local.get $len) (i32.const 0) (i32.const 0))
            (i32.const -1)))
  (func (export "on_request") (local $n i32)
    (if (call $has (i32.const 88) (i32.const 4)) (then unreachable))
    (if (call $has (i32.const 96) (i32.const 4)) (then (loop $forever (br $forever))))
    (if (call $has (i32.const 104) (i32.const 5))
      (then (drop (memory.grow (i32.const 1000)))))
    (local.set $n (call $get (i32.const 0) (i32.const 0) (i32.const 6) (i32.const 1024) (i32.const 256)))
    (if (i32.eq (local.get $n) (i32.const -1))
      (then (call $reply (i32.const 16) (i32.const 12) (i32.const 32) (i32.const 9)) (return)))
    (call $set (i32.const 0) (i32.const 48) (i32.const 6) (i32.const 1024) (local.get $n))
    (call $set (i32.const 4) (i32.const 64) (i32.const 4) (i32.const 72) (i32.const 4))
    (call $set (i32.const 2) (i32.const 80) (i32.const 4) (i32.const 72) (i32.const 4)))
  (func (export "on_complete")
    (if (i32.ne (call $get (i32.const 2) (i32.const 80) (i32.const 4) (i32.const 0) (i32.const 0)) (i32.const -1))
      (then (call $count (i32.const 112) (i32.const 4) (i64.const 1))))))
"#;

/// Writes `wat` compiled to a file and builds the filter on it.
fn filter(
    wat: &str,
    extra: serde_json::Value,
) -> Result<(ScriptFilter<Instance>, Metrics), Box<dyn std::error::Error>> {
    // A directory of this call's own, removed whole, so tests running side by side never
    // share (or leave behind) one.
    let dir = std::env::temp_dir().join(format!(
        "mp-wasm-test-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("filter.wasm");
    std::fs::write(&path, wat::parse_str(wat)?)?;
    let metrics = Metrics::new();
    let base = serde_json::json!({ "path": path, "instances": 2, "counters": ["done"] });
    let built = build(&config(base, &extra), &context(&metrics, "wasm"));
    std::fs::remove_dir_all(&dir)?;
    Ok((built?, metrics))
}

#[test]
fn the_module_reads_edits_routes_keeps_state_and_replies() -> TestResult {
    let (filter, metrics) = filter(FILTER, serde_json::json!({}))?;
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Unauthorized));

    let request = request(&[("tenant", "t1")]);
    let mut record = self::record();
    let (decision, mutation) = on_request(&filter, &request, &mut record);
    assert!(matches!(decision, FilterDecision::Continue), "{decision:?}");
    assert_eq!(
        mutation.sets(),
        &[(ByteStr::from("x-wasm"), ByteStr::from("t1"))]
    );
    assert_fast_lane_and_seen(&record, &StateValue::Str("fast".into()));
    complete(&filter, &request, &record);
    assert!(
        counted(&metrics, "counter=\"done\"", 1),
        "{}",
        metrics.render()
    );
    Ok(())
}

#[test]
fn traps_fuel_and_memory_are_counted_and_answered_with_internal_errors() -> TestResult {
    let (filter, metrics) = filter(
        FILTER,
        serde_json::json!({ "max_fuel": 100000, "max_memory_bytes": 1048576 }),
    )?;
    for (key, reason) in [
        ("boom", "reason=\"error\""),
        ("spin", "reason=\"instruction_budget\""),
        ("hoard", "reason=\"memory\""),
    ] {
        let (decision, _) = on_request(&filter, &request(&[(key, "1")]), &mut record());
        assert_eq!(
            reply_kind(&decision),
            Some(LocalReplyKind::Internal),
            "{key}"
        );
        assert!(counted(&metrics, reason, 1), "{key}: {}", metrics.render());
    }
    // The instance is sound afterwards, with its whole budget again.
    let (decision, _) = on_request(&filter, &request(&[("tenant", "t")]), &mut record());
    assert!(matches!(decision, FilterDecision::Continue));
    Ok(())
}

#[test]
fn unusable_modules_are_config_errors() {
    let reason = |wat: &str| {
        filter(wat, serde_json::json!({}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(reason("(module (memory (export \"memory\") 1))").contains("exports none of"));
    assert!(reason("(module (func (export \"on_request\")))").contains("no `memory`"));
    assert!(
        reason(
            "(module (memory (export \"memory\") 1) (func (export \"on_request\") (param i32)))"
        )
        .contains("on_request must be a function of type () -> ()")
    );
    assert!(
        reason("(module (import \"metaprotocol\" \"nope\" (func)) (memory (export \"memory\") 1))")
            .contains("fails when loaded")
    );
    assert!(
        reason("(module (memory (export \"memory\") 1) (func $s unreachable) (start $s))")
            .contains("fails when loaded")
    );
}
