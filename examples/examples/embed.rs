//! The engine embedded in your own gateway, with a filter of your own: requests without a
//! `tenant` attachment are refused with a protocol-correct error, the others are tagged.
//!
//! Run with `cargo run -p metaprotocol-examples --example embed`.

use std::sync::Arc;

use metaprotocol_core::{
    ByteStr, FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext,
};
use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::{Config, FilterRegistry, Proxy};

/// Refuses requests that carry no tenant; tags the rest with `x-gateway`.
struct RequireTenant {
    gateway: ByteStr,
}

impl L7Filter for RequireTenant {
    fn name(&self) -> &str {
        "require_tenant"
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        if !ctx.request.metadata.contains("tenant") {
            return FilterDecision::Reply(LocalReply::new(
                LocalReplyKind::Unauthorized,
                "unauthorized: a tenant attachment is required",
            ));
        }
        ctx.mutation
            .set(ByteStr::from_static("x-gateway"), self.gateway.clone());
        FilterDecision::Continue
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = DemoProvider::start("provider").await?;
    let mut filters = FilterRegistry::with_builtins();
    filters.register("require_tenant", |config, _context| {
        let gateway = config
            .get("gateway")
            .and_then(|g| g.as_str())
            .unwrap_or("embedded")
            .to_owned();
        Ok(Arc::new(RequireTenant {
            gateway: gateway.into(),
        }) as Arc<dyn L7Filter>)
    });
    let config = Config::from_yaml(&format!(
        "listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: r
    filters: [ {{ name: require_tenant, config: {{ gateway: edge-1 }} }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    ))?;
    let proxy = Proxy::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .filters(filters)
        .start()
        .await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);

    let refused = client.call("sayHello", "anon", &[]).await?;
    println!("without a tenant: Dubbo status {}", refused.dubbo_status);
    let served = client.call("sayHello", "ada", &[("tenant", "t1")]).await?;
    println!(
        "with a tenant: status {}, answered by {:?}",
        served.dubbo_status,
        served.attachment("provider")
    );
    let seen = provider.seen();
    let tag = seen
        .last()
        .and_then(|r| r.metadata.get("x-gateway"))
        .map(|v| v.to_string());
    println!("the provider saw x-gateway = {tag:?}");
    proxy.shutdown().await;
    Ok(())
}
