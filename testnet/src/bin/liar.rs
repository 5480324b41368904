//! `liar`: a peer that speaks the moxnet protocol and misbehaves on purpose, for tests
//! (`testnet::liar`). It opens an existing home (made with `moxnet init` and filled with
//! `moxnet publish`, while no node runs on it), prints one JSON line
//! (`{"peer_id", "node_id", "listen"}`) and runs until killed.
//!
//! ```text
//! liar corrupt-blobs --home DIR [--listen MULTIADDR] [--bootstrap MULTIADDR]...
//! liar wrong-sizes --home DIR [--listen MULTIADDR] [--bootstrap MULTIADDR]...
//! liar compute --home DIR --fault wrong-output|bad-hash|silent|inflated-fuel --honest PEER_ID \
//!     [--listen MULTIADDR] [--bootstrap MULTIADDR]...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use net::libp2p::{Multiaddr, PeerId};
use testnet::liar::{Config, Fault, Lie};

#[derive(Parser)]
#[command(about = "A moxnet peer that lies, for tests")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve the home's blobs, flipping one byte in every 64 KiB of every range served.
    CorruptBlobs {
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Serve the home's blobs with their true bytes but every size stated 100 bytes too large.
    WrongSizes {
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Offer compute and answer calls with the honest provider's outputs, falsified.
    Compute {
        #[command(flatten)]
        peer: PeerArgs,
        /// How to lie: wrong-output, bad-hash, silent, inflated-fuel or fake-gpu.
        #[arg(long)]
        fault: Fault,
        /// The honest provider (peer id) whose answers are copied.
        #[arg(long)]
        honest: PeerId,
    },
}

#[derive(Args)]
struct PeerArgs {
    /// The moxnet home whose identity and store it uses.
    #[arg(long)]
    home: PathBuf,
    /// Address to listen on (repeatable).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: Vec<Multiaddr>,
    /// Peer to connect to at start, with `/p2p/<peer id>` (repeatable).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (peer, lie) = match cli.mode {
        Mode::CorruptBlobs { peer } => (peer, Lie::CorruptBlobs),
        Mode::WrongSizes { peer } => (peer, Lie::WrongSizes),
        Mode::Compute {
            peer,
            fault,
            honest,
        } => (peer, Lie::Compute { fault, honest }),
    };
    let config = Config {
        home: peer.home,
        listen: peer.listen,
        bootstrap: peer.bootstrap,
        lie,
    };
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(testnet::liar::run(config)));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
