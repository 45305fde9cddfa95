//! `decode_cost`: decodes a fixed number of the load generator's frames (`src/wire/`) with one
//! protocol's codec, then exits: a target for callgrind, whose instruction counts do not move
//! with what else the machine runs, as the criterion codec benches' times do. The frames are
//! written one after another into one buffer, as a connection's reads bring them, and decoded
//! from it as the engine does (each into a message reused from frame to frame, `decode_into`);
//! requests by a downstream codec, the echo server's answers by an upstream one.
//!
//! Count only the codec's `decode_into` (the frames' writing and the messages' reset for reuse
//! are left out), and divide by the number of frames:
//!
//! ```sh
//! cargo build --release -p metaprotocol-benches --bin decode_cost
//! valgrind --tool=callgrind --toggle-collect='*as metaprotocol_core::codec::Codec>::decode_into' \
//!     target/release/decode_cost --protocol dubbo --frames request --count 10000
//! ```

use std::hint::black_box;
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use metaprotocol_benches::in_process::codecs;
use metaprotocol_benches::wire::Protocol;
use metaprotocol_core::{CodecOptions, Message, MessageKind, Side, WireVariant};

#[derive(Parser)]
#[command(name = "decode_cost", about = "Decodes the load generator's frames")]
struct Args {
    /// The protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Dubbo)]
    protocol: Protocol,
    /// Which frames: the calls or the echo server's answers to them.
    #[arg(long, value_enum, default_value_t = Frames::Request)]
    frames: Frames,
    /// Frames decoded.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 32)]
    payload: usize,
}

/// The kind of frames decoded.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Frames {
    /// Calls, as the load generator writes them.
    Request,
    /// The echo server's answers.
    Response,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("decode_cost: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let (mut src, side) = frames(args)?;
    let Some(factory) = codecs().build(args.protocol.name(), &CodecOptions::default()) else {
        anyhow::bail!("no codec for {}", args.protocol);
    };
    let mut codec = factory?.new_codec(side, WireVariant::default());
    let mut decoded = 0;
    let mut message = Message::empty();
    while codec.decode_into(&mut src, &mut message)? {
        anyhow::ensure!(
            message.reject_reason.is_none(),
            "a frame was rejected: {:?}",
            message.reject_reason
        );
        black_box(&message);
        decoded += 1;
        // As the engine keeps a finished message for the next frame: its frame goes at once.
        message.reset(MessageKind::Request, 0, Bytes::new());
    }
    anyhow::ensure!(
        decoded == args.count && src.is_empty(),
        "decoded {decoded} of {} frames",
        args.count
    );
    println!("{decoded} {} frames decoded", args.protocol);
    Ok(())
}

/// The frames, one after another, and the side of the codec that reads them.
fn frames(args: &Args) -> anyhow::Result<(BytesMut, Side)> {
    let mut caller = args.protocol.caller(args.payload)?;
    let mut calls = BytesMut::new();
    let mut answers = BytesMut::new();
    for id in 0..args.count {
        let start = calls.len();
        caller.write(id, &mut calls)?;
        if let Frames::Response = args.frames {
            let call = Bytes::copy_from_slice(&calls[start..]);
            args.protocol.answer(&call, &mut answers)?;
        }
    }
    Ok(match args.frames {
        Frames::Request => (calls, Side::Downstream),
        Frames::Response => (answers, Side::Upstream),
    })
}
