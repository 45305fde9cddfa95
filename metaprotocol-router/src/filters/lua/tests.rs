use bytes::Bytes;
use metaprotocol_core::{
    ByteStr, CompleteContext, FilterDecision, L7Filter, LocalReplyKind, Message, MessageKind,
    Mutation, ResponseContext, ResponseFlags,
};

use super::*;
use crate::filters::script::testing::{
    TestResult, assert_fast_lane_and_seen, complete, config, context, counted, on_request, record,
    reply_kind, request,
};
use crate::filters::script::{ScriptFilter, StateValue};
use crate::stats::Metrics;

type LuaFilter = ScriptFilter<instance::Instance>;

fn filter(source: &str, extra: serde_json::Value) -> Result<(LuaFilter, Metrics), ConfigError> {
    let metrics = Metrics::new();
    let config = config(
        serde_json::json!({ "source": source, "instances": 2 }),
        &extra,
    );
    let filter = build(&config, &context(&metrics, "lua"))?;
    Ok((filter, metrics))
}

fn errors(metrics: &Metrics, reason: &str) -> bool {
    counted(metrics, &format!("reason=\"{reason}\""), 1)
}

#[test]
fn the_script_reads_edits_routes_and_keeps_state() -> TestResult {
    let (filter, _) = filter(
        r#"
        function on_request(msg)
          if msg:get("tenant") == nil then return msg:reply("unauthorized", "no tenant") end
          msg:set("x-lua", msg:get("tenant") .. "@" .. msg:listener())
          msg:remove("debug")
          msg:set_routing_key("lane", "fast")
          msg:set_state("seen", 3)
        end
        "#,
        serde_json::json!({}),
    )?;
    let mut record = record();
    let (decision, _) = on_request(&filter, &request(&[]), &mut record);
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Unauthorized));

    let mut record = self::record();
    let (decision, mutation) = on_request(&filter, &request(&[("tenant", "t1")]), &mut record);
    assert!(matches!(decision, FilterDecision::Continue));
    assert_eq!(
        mutation.sets(),
        &[(ByteStr::from("x-lua"), ByteStr::from("t1@in"))]
    );
    assert!(mutation.drops(b"debug"));
    assert_fast_lane_and_seen(&record, &StateValue::Int(3));
    Ok(())
}

#[test]
fn response_and_completion_hooks_see_the_record_and_the_state() -> TestResult {
    let (filter, metrics) = filter(
        r#"
        function on_request(msg) msg:set_state("t", msg:get("tenant")) end
        function on_response(msg)
          msg:set("x-tenant", msg:state("t"))
          msg:set("x-answer", msg:get("answer") or "none")
        end
        function on_complete(msg)
          if msg:flags() == "LR" and msg:local_reply() == "timeout" and msg:state("t") == "t1" then
            count("timeouts")
          end
        end
        "#,
        serde_json::json!({ "counters": ["timeouts"] }),
    )?;
    let request = request(&[("tenant", "t1")]);
    let mut record = record();
    on_request(&filter, &request, &mut record);
    let mut response = Message::new(MessageKind::Response, 1, Bytes::new());
    response.metadata.insert("answer", "42");
    let mut mutation = Mutation::new();
    let decision = filter.on_response(&mut ResponseContext {
        request: &request,
        response: &response,
        mutation: &mut mutation,
        record: &mut record,
    });
    assert!(matches!(decision, FilterDecision::Continue));
    let sets: Vec<_> = mutation
        .sets()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(sets, [("x-tenant", "t1"), ("x-answer", "42")]);
    record.set_local_reply(LocalReplyKind::Timeout, ResponseFlags::NONE);
    complete(&filter, &request, &record);
    assert!(
        counted(&metrics, "counter=\"timeouts\"", 1),
        "{}",
        metrics.render()
    );
    Ok(())
}

#[test]
fn a_script_that_does_not_compile_is_a_config_error_naming_its_line() {
    let err = filter(
        "function on_request(msg)\n  local x = \nend\n",
        serde_json::json!({}),
    )
    .err();
    let err = err.map(|e| (e.field, e.reason));
    let (field, reason) = err.unwrap_or_default();
    assert_eq!(field, "source");
    assert!(
        reason.starts_with("the script does not compile: line 3:"),
        "{reason}"
    );

    let err = filter("local t = nil\nt.x = 1\n", serde_json::json!({})).err();
    let reason = err.map(|e| e.reason).unwrap_or_default();
    assert!(
        reason.starts_with("the script fails when loaded: line 2:"),
        "{reason}"
    );

    let err = filter("x = 1", serde_json::json!({})).err();
    assert!(err.is_some_and(|e| e.reason.contains("defines none of")));
    let err = filter("on_request = 1", serde_json::json!({})).err();
    assert!(err.is_some_and(|e| e.reason.contains("on_request must be a function")));
    let err = filter(
        "function on_request() end",
        serde_json::json!({ "max_memory_bytes": 1 }),
    )
    .err();
    assert!(err.is_some_and(|e| e.field == "max_memory_bytes"));
    let err = filter(
        "function on_request() end",
        serde_json::json!({ "sauce": 1 }),
    )
    .err();
    assert!(err.is_some_and(|e| e.reason.contains("unknown field `sauce`")));
}

#[test]
fn budgets_out_of_range_are_config_errors() {
    for (field, value) in [
        ("max_instructions", 0),
        ("max_instructions", 1_000_000_001),
        ("max_instructions", u64::MAX),
        ("max_memory_bytes", (1 << 30) + 1),
    ] {
        let err = filter(
            "function on_request() end",
            serde_json::json!({ field: value }),
        )
        .err();
        assert!(
            err.is_some_and(|e| e.field == field && e.reason.starts_with("must be from")),
            "{field}: {value}"
        );
    }
    let most =
        serde_json::json!({ "max_instructions": 1_000_000_000, "max_memory_bytes": 1 << 30 });
    assert!(filter("function on_request() end", most).is_ok());
}

#[test]
fn a_runtime_error_is_counted_and_answered_with_an_internal_error() -> TestResult {
    let (filter, metrics) = filter(
        "function on_request(msg)\n  local t = nil\n  return t.field\nend\n",
        serde_json::json!({}),
    )?;
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    assert!(errors(&metrics, "error"), "{}", metrics.render());
    // The state is sound afterwards: the next request fails the same way, not worse.
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    Ok(())
}

#[test]
fn operations_a_hook_does_not_allow_are_runtime_errors() -> TestResult {
    let (filter, metrics) = filter(
        "function on_complete(msg) msg:set('k', 'v') end\n\
         function on_request(msg) msg:reply('no_such_kind', 'x') end",
        serde_json::json!({}),
    )?;
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    filter.on_complete(&CompleteContext {
        request: &request(&[]),
        response: None,
        record: &record(),
    });
    assert!(counted(&metrics, "reason=\"error\"", 2));
    Ok(())
}

#[test]
fn a_runaway_script_is_stopped_by_its_budget() -> TestResult {
    let (filter, metrics) = filter(
        "function on_request(msg)\n  if msg:get('spin') then while true do pcall(function() end) end end\nend",
        serde_json::json!({ "max_instructions": 100000 }),
    )?;
    let (decision, _) = on_request(&filter, &request(&[("spin", "1")]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    assert!(
        errors(&metrics, "instruction_budget"),
        "{}",
        metrics.render()
    );
    // A well-behaved request after it gets the whole budget again.
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert!(matches!(decision, FilterDecision::Continue));
    Ok(())
}

/// Runs `source`'s `on_request` on a thread of its own and waits for its answer: the reason its
/// failure was counted under (`None` for none), or an error if it did not answer in 30 s (its
/// thread then spins on until the test process ends).
fn answered(source: &str) -> Result<Option<&'static str>, Box<dyn std::error::Error>> {
    let (filter, metrics) = filter(source, serde_json::json!({}))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (decision, _) = on_request(&filter, &request(&[]), &mut record());
        let _ = tx.send(reply_kind(&decision));
    });
    let kind = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .map_err(|_| format!("no answer in 30 s: {source}"))?;
    let reason = ["error", "instruction_budget", "time", "memory"]
        .into_iter()
        .find(|reason| errors(&metrics, reason));
    assert_eq!(kind.is_some(), reason.is_some(), "{source}");
    Ok(reason)
}

#[test]
fn a_script_that_catches_the_budget_error_is_stopped_all_the_same() -> TestResult {
    // Each tick of the count hook falls inside the looping function, where pcall catches it.
    let source = "function on_request(msg)\n\
                    while true do pcall(function() while true do end end) end\n\
                  end";
    assert_eq!(answered(source)?, Some("instruction_budget"));
    Ok(())
}

#[test]
fn an_error_handler_runs_within_the_budget() -> TestResult {
    // Lua ran xpcall's handler inside the count hook that raised the error, where it counts no
    // instructions.
    let source = "function on_request(msg)\n\
                    xpcall(function() while true do end end, function() while true do end end)\n\
                  end";
    assert_eq!(answered(source)?, Some("instruction_budget"));
    // Otherwise xpcall is the library's: the handler's answer, or the function's results.
    let source = "function on_request(msg)\n\
                    local ok, why = xpcall(error, function(e) return 'handled ' .. e end, 'oops')\n\
                    local fine, a, b = xpcall(function(x) return x, 2 end, error, 1)\n\
                    if ok or why ~= 'handled oops' or not fine or a ~= 1 or b ~= 2 then error(why) end\n\
                  end";
    assert_eq!(answered(source)?, None);
    Ok(())
}

#[test]
fn a_script_cannot_set_a_finalizer() -> TestResult {
    // Lua runs finalizers with hooks off: this one held its thread forever.
    let source = "function on_request(msg)\n\
                    setmetatable({}, {__gc = function() while true do end end})\n\
                    collectgarbage()\n\
                  end";
    assert_eq!(answered(source)?, Some("error"));
    // Other metatables are set as ever, `__gc` added later included (it makes no finalizer).
    let source = "function on_request(msg)\n\
                    local mt = {__index = {x = 1}}\n\
                    local t = setmetatable({}, mt)\n\
                    mt.__gc = function() while true do end end\n\
                    collectgarbage()\n\
                    if t.x ~= 1 or getmetatable(t) ~= mt or setmetatable(t, nil) ~= t then error('?') end\n\
                  end";
    assert_eq!(answered(source)?, None);
    Ok(())
}

#[test]
fn logging_is_charged_by_the_bytes_logged() -> TestResult {
    // Uncharged, each line a few instructions: this wrote about 2 GB until the time budget.
    let source = "function on_request(msg)\n\
                    local line = ('x'):rep(100000)\n\
                    for i = 1, 1e6 do log('debug', line) end\n\
                  end";
    assert_eq!(answered(source)?, Some("instruction_budget"));
    Ok(())
}

#[test]
fn a_sort_is_charged_by_its_comparisons() -> TestResult {
    // The library's sort compares in C, where the count hook never fires: 2,000 strings with a
    // common 2,000-byte prefix, sorted in a loop, cost a few instructions a sort, and the run
    // went on until the time budget stopped it.
    let source = "function on_request(msg)\n\
                    local prefix = ('x'):rep(2000)\n\
                    local t = {}\n\
                    for i = 1, 2000 do t[i] = prefix .. i end\n\
                    for i = 1, 1e5 do table.sort(t) end\n\
                  end";
    assert_eq!(answered(source)?, Some("instruction_budget"));
    // A sort of a filter's size still runs, with the library's comparison or a comparator.
    let source = "function on_request(msg)\n\
                    local t = { 'b', 'a', 'c' }\n\
                    table.sort(t)\n\
                    if t[1] ~= 'a' then error('unsorted') end\n\
                    table.sort(t, function(x, y) return x > y end)\n\
                    if t[1] ~= 'c' then error('unsorted') end\n\
                  end";
    assert_eq!(answered(source)?, None);
    Ok(())
}

#[test]
fn a_run_stopped_midway_leaves_nothing_to_the_next_one() -> TestResult {
    // The budget stops the first run between `busy = true` and `busy = false`.
    let (filter, metrics) = filter(
        "local busy = false\n\
         function on_request(msg)\n\
           if busy then return msg:reply('unavailable', 'left busy') end\n\
           busy = true\n\
           if msg:get('spin') then while true do end end\n\
           busy = false\n\
         end",
        serde_json::json!({ "instances": 1 }),
    )?;
    let (decision, _) = on_request(&filter, &request(&[("spin", "1")]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert!(matches!(decision, FilterDecision::Continue), "{decision:?}");
    assert!(
        counted(&metrics, "script_instances_replaced_total", 1),
        "{}",
        metrics.render()
    );
    Ok(())
}

#[test]
fn a_script_that_hoards_memory_is_stopped_by_its_limit() -> TestResult {
    let (filter, metrics) = filter(
        // Small strings, many of them: a megabyte is reached long before the instruction
        // budget (one `rep` of 64 MiB would be charged past the budget at once).
        "function on_request(msg) local t = {} for i = 1, 1e6 do t[i] = ('x'):rep(100) .. i end end",
        serde_json::json!({ "max_memory_bytes": 1048576 }),
    )?;
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
    assert!(errors(&metrics, "memory"), "{}", metrics.render());
    Ok(())
}

#[test]
fn the_sandbox_has_no_files_processes_or_loaders() -> TestResult {
    let (filter, _) = filter(
        "function on_request(msg)\n\
           for _, name in ipairs({'io', 'os', 'require', 'load', 'dofile', 'loadfile', 'package', 'debug'}) do\n\
             if _G[name] ~= nil then return msg:reply('internal', name) end\n\
           end\n\
         end",
        serde_json::json!({}),
    )?;
    let (decision, _) = on_request(&filter, &request(&[]), &mut record());
    assert!(matches!(decision, FilterDecision::Continue), "{decision:?}");
    Ok(())
}

#[test]
fn a_backtracking_pattern_on_a_long_value_is_stopped_by_its_budget() -> TestResult {
    // Lua's matcher runs inside one C call, where the count hook never fires: without charging
    // it, this takes about 2 s on 1,000 bytes (debug build), and decades on 1 MB.
    stopped_by_the_budget(
        1000,
        &[
            "string.find(v, '.-.-x')",
            "v:match('.-.-x')",
            "v:gsub('.-.-x', '')",
            "for _ in v:gmatch('.-.-x') do end",
            // Caught, it stops at the next tick outside the pcall.
            "pcall(string.find, v, '.-.-x') while true do end",
        ],
    )
}

/// Checks that each of `calls`, run by a hook on a value `v` of `len` bytes, is stopped by the
/// default instruction budget.
fn stopped_by_the_budget(len: usize, calls: &[&str]) -> TestResult {
    stopped_by("instruction_budget", len, calls)
}

/// Checks that each of `calls`, run by a hook on a value `v` of `len` bytes, fails for `reason`
/// under the default budgets.
fn stopped_by(reason: &str, len: usize, calls: &[&str]) -> TestResult {
    let long: &'static str = Box::leak("a".repeat(len).into_boxed_str());
    for call in calls {
        let (filter, metrics) = filter(
            &format!("function on_request(msg) local v = msg:get('v') {call} end"),
            serde_json::json!({}),
        )?;
        let (decision, _) = on_request(&filter, &request(&[("v", long)]), &mut record());
        assert_eq!(
            reply_kind(&decision),
            Some(LocalReplyKind::Internal),
            "{call}"
        );
        assert!(errors(&metrics, reason), "{call}");
    }
    Ok(())
}

#[test]
fn a_run_whose_operations_cost_more_than_their_instructions_is_stopped_in_time() -> TestResult {
    // Each concatenation is an instruction or two, and copies both its strings whole.
    // Unbounded by the clock, this loop ran for 10 s within its instructions (debug build).
    stopped_by(
        "time",
        1 << 20,
        &["local s = v .. v for _ = 1, 100000 do local _ = s .. 'x' end"],
    )
}

#[test]
fn string_functions_are_charged_by_the_bytes_they_make() -> TestResult {
    // Each call is one instruction to the count hook: uncharged, a thousand upper-casings of a
    // 1 MiB value take seconds within a budget of a million instructions.
    stopped_by_the_budget(
        1 << 20,
        &[
            "for _ = 1, 1000 do local _ = v:upper() end",
            "for _ = 1, 1000 do local _ = v:reverse() end",
            "local _ = string.rep('x', 1e7)",
            "local _ = ('ab'):rep(1e6, v)",
        ],
    )
}

#[test]
fn patterns_on_ordinary_values_fit_the_budget() -> TestResult {
    // A thousand matches and substitutions on a header-sized value, in the default budget.
    let (filter, metrics) = filter(
        r#"
        function on_request(msg)
          local v = msg:get("v")
          for i = 1, 1000 do
            local user, domain = v:match("^(%w+)@(.-)$")
            assert(user == "alice" and domain == "example.com")
            assert(string.find(v, "example", 1, true) == 7)
            assert(select(2, v:gsub("%a+", "x")) == 3)
          end
          msg:set("n", tostring(#v))
        end
        "#,
        serde_json::json!({}),
    )?;
    let (decision, mutation) = on_request(
        &filter,
        &request(&[("v", "alice@example.com")]),
        &mut record(),
    );
    assert!(
        matches!(decision, FilterDecision::Continue),
        "{}",
        metrics.render()
    );
    assert_eq!(
        mutation.sets(),
        &[(ByteStr::from("n"), ByteStr::from("17"))]
    );
    Ok(())
}

#[test]
fn a_match_is_charged_its_worst_case() {
    use instance::match_cost;
    // Every start, plus the subject read once.
    assert_eq!(match_cost(100, b"abc", true), 201);
    assert_eq!(match_cost(100, b"^abc", true), 101);
    // A repetition tries every end from every start: C(102, 2), plus 100.
    assert_eq!(match_cost(100, b"a.-b", true), 5151 + 100);
    assert_eq!(match_cost(100, b"^a.-b", true), 101 + 100);
    assert_eq!(match_cost(100, b"^a.-b", false), 5151 + 100);
    assert_eq!(match_cost(100, b"%bxy", true), 5151 + 100);
    assert_eq!(match_cost(100, b"https?", true), 202 + 100);
    // An escaped `%-` is a character.
    assert_eq!(match_cost(100, b"%-", true), 201);
    assert_eq!(match_cost(1000, b".-.-x", true), 167_668_501 + 1000);
    assert_eq!(
        match_cost(1 << 20, b".-.-.-.-.-.-.-.-.-.-.-.-.-.-.-x", true),
        u64::MAX
    );
}
