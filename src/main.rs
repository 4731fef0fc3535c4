//! The `pikube` command.

use clap::Parser;

/// pikube: a Kubernetes distribution in one small binary, for Raspberry Pi class machines.
#[derive(Parser, Debug)]
#[command(name = "pikube", version, about, long_about = None)]
struct Cli {}

fn main() {
    // Only `--version` and `--help` exist so far; the server and agent commands arrive
    // with the API server and the node agent.
    let _ = Cli::parse();
    eprintln!(
        "pikube {}: no command yet; see `pikube --help`",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
