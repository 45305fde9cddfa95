//! The `lua` and `wasm` filters through the proxy, with real Dubbo providers behind it
//! (sofa-rpc-node as `v1`, dubbo-py as `v2`, from the interop suite) and the engine's Dubbo
//! client in front. Both filters run the same example logic (`examples/filters/tenant.lua` and
//! `examples/wasm-filter`): metadata read, a mutation the provider sees, a routing key that
//! steers the route, a local reply, per-request state carried to the response, a completion
//! counter, a runtime error and a runaway script answered with internal errors and counted, and
//! broken scripts rejected at load.
//!
//! Needs the Dubbo interop tools (`examples/tests/interop/dubbo/setup.sh`); without them the
//! tests are skipped, unless `METAPROTOCOL_REQUIRE_INTEROP=1` (CI) makes them fail. The example
//! WebAssembly filter is committed built (`scripts/build-wasm-filter.sh` rebuilds it).

#[allow(dead_code)]
mod support;

#[path = "interop/dubbo/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::path::PathBuf;

use metaprotocol_examples::dubbo_demo::{DubboClient, Reply};
use metaprotocol_router::{Config, Proxy, StartError};
use support::TestResult;
use support::process::Scratch;

/// The example Lua filter.
const LUA_FILTER: &str = include_str!("../filters/tenant.lua");

/// The example WebAssembly filter, committed built (`scripts/build-wasm-filter.sh`).
fn wasm_filter() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("wasm-filter/metaprotocol_wasm_filter_example.wasm")
}

/// Dubbo statuses the tests expect.
const OK: u8 = 20;
const BAD_REQUEST: u8 = 40;
const SERVER_ERROR: u8 = 80;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Lua,
    Wasm,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lua => "lua",
            Kind::Wasm => "wasm",
        }
    }

    /// The listener's `filters` entry, indented for the config below.
    fn filter(self) -> String {
        match self {
            Kind::Lua => {
                let source: String = LUA_FILTER
                    .lines()
                    .map(|line| format!("            {line}\n"))
                    .collect();
                format!(
                    "      - name: lua\n        config:\n          max_instructions: 100000\n          counters: [ fast_lane ]\n          source: |\n{source}"
                )
            }
            Kind::Wasm => format!(
                "      - name: wasm\n        config: {{ path: \"{}\", max_fuel: 1000000, counters: [ fast_lane ] }}\n",
                wasm_filter().display()
            ),
        }
    }
}

/// `lane=fast` (a routing key the filter sets) goes to v2, the rest to v1.
fn config(kind: Kind, v1: &str, v2: &str) -> String {
    format!(
        r#"
listeners:
  - name: dubbo-in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    filters:
{filter}
route_configs:
  - name: routes
    routes:
      - name: lane-fast
        match: {{ metadata: [ {{ key: lane, exact: fast }} ] }}
        route: {{ cluster: providers, subset: {{ version: v2 }} }}
      - name: default
        route: {{ cluster: providers, subset: {{ version: v1 }} }}
clusters:
  - name: providers
    endpoints:
      - {{ address: "{v1}", labels: {{ version: v1 }} }}
      - {{ address: "{v2}", labels: {{ version: v2 }} }}
"#,
        filter = kind.filter()
    )
}

/// The value of the series of `name` whose labels include `label`, 0 if none.
fn metric(proxy: &Proxy, name: &str, label: &str) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(" ").next()?.parse::<u64>().ok())
        .sum()
}

fn expect(reply: &Reply, status: u8, text: &str) -> TestResult {
    if reply.dubbo_status == status && reply.body_contains(text) {
        return Ok(());
    }
    Err(format!(
        "expected status {status} with {text:?}, got {} {:?}",
        reply.dubbo_status,
        String::from_utf8_lossy(&reply.frame)
    )
    .into())
}

fn end_to_end(kind: Kind) -> TestResult {
    if !harness::tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new(&format!("script-filter-{}", kind.name()))?;
    let (v1, v2) = harness::start_providers(&scratch)?;
    let runtime = support::runtime()?;
    runtime.block_on(async {
        let proxy = support::proxy::start_engine(&config(kind, &v1.addr(), &v2.addr())).await?;
        let client = DubboClient::new(support::proxy::listener_addr(&proxy, "dubbo-in")?);
        let result = check(kind, &proxy, &client, &v1).await;
        proxy.shutdown().await;
        result
    })
}

async fn check(
    kind: Kind,
    proxy: &Proxy,
    client: &DubboClient,
    v1: &harness::Provider,
) -> TestResult {
    // Metadata read, local reply: no tenant, no call.
    let refused = client.call("sayHello", "anon", &[]).await?;
    expect(&refused, BAD_REQUEST, "unauthorized: a tenant is required")?;
    assert!(v1.calls().is_empty(), "{:?}", v1.calls().len());

    // A mutation the provider sees; state carried to the response hook.
    let served = client.call("sayHello", "ada", &[("tenant", "t1")]).await?;
    let tag = format!("x-filtered-by={}:t1", kind.name());
    expect(&served, OK, "from v1")?;
    expect(&served, OK, &tag)?;
    let seen = v1.calls();
    let attachment = seen.last().and_then(|c| c.attachments.get("x-filtered-by"));
    assert_eq!(
        attachment.map(String::as_str),
        Some(&tag["x-filtered-by=".len()..])
    );
    assert_eq!(served.attachment("x-tenant-echo"), Some("t1"));

    // A routing key steers the route; on_complete reads the record and counts.
    assert_eq!(
        metric(proxy, "metaprotocol_script_counter_total", "fast_lane"),
        0
    );
    let fast = client
        .call("sayHello", "bo", &[("tenant", "t2"), ("x-lane", "fast")])
        .await?;
    expect(&fast, OK, "from v2")?;
    assert_eq!(
        metric(proxy, "metaprotocol_script_counter_total", "fast_lane"),
        1
    );

    // A runtime error and a runaway script: internal errors, counted; the proxy goes on.
    let failed = client
        .call("sayHello", "cy", &[("tenant", "t3"), ("x-boom", "1")])
        .await?;
    expect(&failed, SERVER_ERROR, "internal")?;
    assert_eq!(
        metric(
            proxy,
            "metaprotocol_script_errors_total",
            "reason=\"error\""
        ),
        1
    );
    let spun = client
        .call("sayHello", "di", &[("tenant", "t4"), ("x-spin", "1")])
        .await?;
    expect(&spun, SERVER_ERROR, "internal")?;
    assert_eq!(
        metric(
            proxy,
            "metaprotocol_script_errors_total",
            "instruction_budget"
        ),
        1
    );
    let again = client.call("sayHello", "ed", &[("tenant", "t5")]).await?;
    expect(&again, OK, "from v1")?;
    Ok(())
}

#[test]
fn lua_filter_end_to_end() -> TestResult {
    end_to_end(Kind::Lua)
}

#[test]
fn wasm_filter_end_to_end() -> TestResult {
    end_to_end(Kind::Wasm)
}

/// The error a proxy gives for `filters` (no upstream is needed to be refused).
fn start_error(filter: &str) -> TestResult<String> {
    let yaml = format!(
        r#"
listeners:
  - name: dubbo-in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    filters:
{filter}
route_configs: [ {{ name: routes, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: "127.0.0.1:1" }} ] }} ]
"#
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = Config::from_yaml(&yaml)?;
    let started = runtime.block_on(Proxy::start(
        config,
        metaprotocol_examples::codec_registry(),
    ));
    match started {
        Ok(proxy) => {
            runtime.block_on(proxy.shutdown());
            Err("the proxy started".into())
        }
        Err(StartError::Config(err)) => Ok(err.located_in(&yaml).to_string()),
        Err(other) => Err(other.into()),
    }
}

#[test]
fn broken_scripts_are_rejected_at_load() -> TestResult {
    let lua = start_error(
        "      - name: lua\n        config:\n          source: |\n            function on_request(msg)\n              msg:set(\"k\",\n            end\n",
    )?;
    assert!(
        lua.starts_with("listeners[0].filters[0].config.source (line 11,"),
        "{lua}"
    );
    assert!(
        lua.contains("the script does not compile: line 3:"),
        "{lua}"
    );

    let scratch = Scratch::new("script-filter-bad-wasm")?;
    let not_wasm = scratch.path("filter.wasm");
    std::fs::write(&not_wasm, b"function on_request(msg) end")?;
    let wasm = start_error(&format!(
        "      - name: wasm\n        config: {{ path: \"{}\" }}\n",
        not_wasm.display()
    ))?;
    assert!(
        wasm.starts_with("listeners[0].filters[0].config.path"),
        "{wasm}"
    );
    assert!(wasm.contains("not a usable filter module"), "{wasm}");
    Ok(())
}
