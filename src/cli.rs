//! Running one command's future to its end: the async runtime, one-line errors, and the
//! process exit code, the same for every subcommand.

use std::future::Future;

/// Which runtime a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: short client commands.
    Single,
    /// All cores: a server or an agent.
    Multi,
}

/// Runs `fut` and returns the exit code: 0, or 1 after printing the error on one line.
pub fn run(runtime: Runtime, fut: impl Future<Output = anyhow::Result<()>>) -> i32 {
    let mut builder = match runtime {
        Runtime::Single => tokio::runtime::Builder::new_current_thread(),
        Runtime::Multi => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pikube: error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pikube: error: {e:#}");
            1
        }
    }
}
