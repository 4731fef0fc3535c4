//! CRI `runtime.v1` client over containerd's unix socket.
//!
//! The generated messages and clients are re-exported as [`v1`], so the agent writes
//! `pikube_runtime::cri::v1::{PodSandboxConfig, ContainerConfig, …}`. [`Cri`] owns one
//! HTTP/2 channel; [`Cri::runtime`] and [`Cri::images`] hand out cheap clones of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// The generated CRI `runtime.v1` API (messages, enums, and the two service clients).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// Largest CRI message accepted (the kubelet uses the same 16 MiB limit).
const MAX_MESSAGE: usize = 16 << 20;
/// How long dialling the socket may take before the attempt fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected CRI client (RuntimeService + ImageService over one channel).
#[derive(Clone, Debug)]
pub struct Cri {
    channel: Channel,
    socket: PathBuf,
}

/// Parses a container runtime endpoint: `unix:///run/x.sock`, `unix:/run/x.sock` or a
/// bare absolute path. Other schemes (tcp, npipe) are refused.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, Error> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(Error::Endpoint(endpoint.to_string()));
    } else {
        endpoint
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err(Error::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Opens a gRPC channel over the unix socket at `socket`. The channel reconnects by
/// itself when the server restarts. Shared with the containerd (image import) client.
pub(crate) async fn unix_channel(socket: &Path) -> Result<Channel, Error> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://[::1]:0")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| Error::Connect {
            endpoint: socket.display().to_string(),
            source,
        })
}

impl Cri {
    /// Connects to the CRI endpoint (`unix:///path/containerd.sock` or a bare path).
    /// Fails when nothing listens there; use [`Cri::wait_ready`] afterwards to wait for
    /// the runtime to report RuntimeReady.
    pub async fn connect(endpoint: &str) -> Result<Cri, Error> {
        let socket = parse_endpoint(endpoint)?;
        let channel = unix_channel(&socket).await?;
        Ok(Cri { channel, socket })
    }

    /// The unix socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A RuntimeService client (pods, containers, exec, status) sharing this channel.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// An ImageService client (image status, pull, remove, fs info) sharing this channel.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The runtime's Version answer (name, version, CRI API version).
    pub async fn version(&self) -> Result<v1::VersionResponse, Error> {
        let req = v1::VersionRequest {
            version: "v1".to_string(),
        };
        Ok(self
            .runtime()
            .version(req)
            .await
            .map_err(|s| Error::rpc("CRI Version", s))?
            .into_inner())
    }

    /// Whether the runtime reports the `RuntimeReady` condition true; the error text
    /// says why not.
    pub async fn runtime_ready(&self) -> Result<(), String> {
        self.version().await.map_err(|e| e.to_string())?;
        let status = self
            .runtime()
            .status(v1::StatusRequest { verbose: false })
            .await
            .map_err(|s| format!("CRI Status: {s}"))?
            .into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        match conditions.iter().find(|c| c.r#type == "RuntimeReady") {
            Some(c) if c.status => Ok(()),
            Some(c) => Err(format!("RuntimeReady false: {} {}", c.reason, c.message)),
            None => Err("no RuntimeReady condition".to_string()),
        }
    }

    /// Waits until Version answers and Status reports `RuntimeReady`, polling every
    /// 100 ms, for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let last = match self.runtime_ready().await {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if start.elapsed() >= timeout {
                return Err(Error::NotReady {
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///run/pikube/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/pikube/containerd/containerd.sock")
        );
        assert_eq!(
            parse_endpoint("unix:/run/c.sock").unwrap(),
            PathBuf::from("/run/c.sock")
        );
        assert_eq!(
            parse_endpoint("/run/c.sock").unwrap(),
            PathBuf::from("/run/c.sock")
        );
        for bad in [
            "tcp://127.0.0.1:1234",
            "relative.sock",
            "unix://",
            "",
            "npipe:////./pipe/x",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(Error::Endpoint(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[tokio::test]
    async fn connect_to_missing_socket_fails() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = Cri::connect(sock.to_str().unwrap()).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
