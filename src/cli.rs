//! Running one command's future to its end: the async runtime, one-line errors, and the
//! process exit code, the same for every subcommand.

use std::future::Future;
use std::path::Path;

use anyhow::Context;

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

/// A client of the API server named in the kubeconfig at `path`.
pub async fn kube_client(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path).with_context(|| {
        format!(
            "cannot read the kubeconfig {} (run on the server as root, or give --kubeconfig)",
            path.display()
        )
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("{} is not a usable kubeconfig", path.display()))?;
    // The API server names this client's writes in managedFields after it.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("pikube/", env!("CARGO_PKG_VERSION"))),
    ));
    kube::Client::try_from(config).context("API client")
}
