//! gRPC probes as kubelet runs them: the standard `grpc.health.v1.Health/Check` over
//! plaintext HTTP/2 to the pod's IP; `SERVING` is success, anything else (another status,
//! an error, no answer within the timeout) a failure with kubelet's message. The two
//! messages are written by hand (one field each) on the tonic channel the CRI client
//! already uses.

use std::time::Duration;

use super::http::USER_AGENT;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about; empty = the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// A [`ServingStatus`] number.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ServingStatus {
    /// Not known.
    Unknown = 0,
    /// Healthy.
    Serving = 1,
    /// Unhealthy.
    NotServing = 2,
    /// The server does not know the service (Watch only).
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The status's name as protobuf prints it (in kubelet's messages).
    pub fn name(n: i32) -> String {
        match n {
            0 => "UNKNOWN".into(),
            1 => "SERVING".into(),
            2 => "NOT_SERVING".into(),
            3 => "SERVICE_UNKNOWN".into(),
            n => n.to_string(),
        }
    }
}

/// The method kubelet calls.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Asks `host:port` whether `service` is serving, within `timeout`.
pub async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let run = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .and_then(|e| e.user_agent(USER_AGENT))
            .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?;
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let answer = grpc
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: service.to_string(),
                }),
                http::uri::PathAndQuery::from_static(CHECK_PATH),
                codec,
            )
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unimplemented => format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    s.message()
                ),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    format!("timeout: health rpc did not complete within {timeout:?}")
                }
                _ => format!("error: health rpc probe failed: {s}"),
            })?
            .into_inner();
        if answer.status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(format!(
                "service unhealthy (responded with {:?})",
                ServingStatus::name(answer.status)
            ))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("timeout: failed to connect service {addr:?} within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::probes::test_servers::GrpcHealth;

    #[tokio::test]
    async fn serving_passes_and_anything_else_fails() {
        let t = Duration::from_secs(5);
        let server = GrpcHealth::start(ServingStatus::Serving as i32).await;
        check("127.0.0.1", server.port, "", t).await.unwrap();
        check("127.0.0.1", server.port, "shop.Cart", t)
            .await
            .unwrap();
        assert_eq!(server.services(), ["", "shop.Cart"]);
        server.set(ServingStatus::NotServing as i32);
        assert_eq!(
            check("127.0.0.1", server.port, "", t).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let port = server.port;
        drop(server);
        // The aborted server task closes its listener when it is next polled.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = check("127.0.0.1", port, "", t).await.unwrap_err();
        assert!(err.starts_with("error: failed to connect service"), "{err}");
    }
}
