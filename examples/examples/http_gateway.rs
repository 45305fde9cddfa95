//! An HTTP gateway in front of Dubbo services: JSON in, a Dubbo call routed by the engine, JSON
//! out (see `metaprotocol_examples::gateway` for the HTTP interface).
//!
//! ```sh
//! cargo run -p metaprotocol-examples --example http_gateway -- --listen 127.0.0.1:8080 --config gateway.yaml
//! curl -H 'Content-Type: application/json' -d '{"args": ["ada"], "attachments": {"tenant": "t1"}}' \
//!   http://127.0.0.1:8080/dubbo/org.apache.dubbo.samples.basic.api.DemoService/sayHello
//! ```
//!
//! `gateway.yaml` holds route configs and clusters as a proxy's config does (listeners are not
//! needed); the gateway routes by its only route config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use metaprotocol_router::{Config, RouterClient};

#[derive(Parser)]
struct Args {
    /// Where the gateway listens for HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The route configs and clusters (YAML).
    #[arg(long)]
    config: PathBuf,
    /// The gateway's bound on every call, whatever the routes allow.
    #[arg(long, default_value = "30s")]
    timeout: humantime::Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_file(&args.config)?;
    let client = RouterClient::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .protocol(metaprotocol_dubbo::PROTOCOL)
        .build()
        .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("gateway listening on http://{}", listener.local_addr()?);
    let timeout: Duration = args.timeout.into();
    // Not `axum::serve`, which bounds nothing: a client could hold a connection (and its task)
    // for good by sending nothing, or reading nothing.
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    metaprotocol_examples::gateway::serve(listener, client, timeout, stop).await;
    Ok(())
}
