//! Import of image tarballs into containerd's `k8s.io` namespace — what
//! `ctr -n k8s.io images import` does — through containerd's content, images and leases
//! services (containerd-client): blobs are written to the content store with the GC
//! reference labels, then the image names point at their manifests.
//!
//! Unpacking into the snapshotter is left to CRI: containerd's CRI plugin unpacks an
//! image on first use (CreateContainer / RunPodSandbox), so an import does not pay for
//! snapshots of images that never run. Imports wait until CRI's ImageStatus sees every
//! imported name, so the agent can rely on them right away.

mod airgap;
mod archive;
mod layout;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as ctrd;
use containerd_client::types::Descriptor;
use futures::{SinkExt, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::cri::{unix_channel, v1 as cri};
use crate::Error;
use archive::Cursor;
use layout::{Blob, Desc, Named, Plan, Source};

pub use airgap::{import_dir, DirImport, STATE_FILE};
pub use archive::Compression;
pub use layout::normalize_ref;

/// The containerd namespace CRI (and so Kubernetes) uses.
pub const NAMESPACE: &str = "k8s.io";
/// Label CRI (containerd 1.7+) puts on the images it manages; set on imports too.
const CRI_LABEL: &str = "io.cri-containerd.image";
/// Bytes per content write message.
const CHUNK: usize = 1 << 20;
/// How long an import waits for CRI to see the imported images.
const CRI_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Imports one tarball (OCI image layout, or a `docker save` archive; plain `.tar`,
/// `.tar.gz`/`.tgz` or `.tar.zst`/`.tzst` by its name) into namespace `k8s.io` of the
/// containerd at `socket`. Returns the image references created or updated, normalized
/// (`localhost/pause:3.9`, `docker.io/library/x:latest`).
pub async fn import_tarball(socket: &Path, tar: &Path) -> Result<Vec<String>, Error> {
    let channel = unix_channel(socket).await?;
    let images = import(&channel, tar).await?;
    Ok(images.into_iter().map(|i| i.name).collect())
}

/// An image name an import created, with the image id (config digest) CRI reports for it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Imported {
    /// The normalized reference.
    pub name: String,
    /// CRI's image id; empty when the socket has no CRI service.
    pub id: String,
}

/// Imports one tarball over `channel`; see [`import_tarball`].
async fn import(channel: &Channel, tar: &Path) -> Result<Vec<Imported>, Error> {
    let name = tar.file_name().unwrap_or_default().to_string_lossy();
    let compression = Compression::of(&name).map_err(|reason| Error::Tarball {
        path: tar.to_path_buf(),
        reason: reason.to_string(),
    })?;
    let path = tar.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || layout::plan(&path, compression))
        .await
        .map_err(|e| Error::Config(format!("read tarball: {e}")))??;
    let lease = Lease::create(channel).await?;
    let result = store(channel, tar, &plan, &lease.id).await;
    lease.delete(channel).await;
    result?;
    let images = wait_cri_visible(channel, &plan.images).await?;
    let refs: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    tracing::info!(tar = %tar.display(), images = ?refs, "imported image tarball");
    Ok(images)
}

/// A request in namespace `k8s.io`, optionally inside a lease.
fn request<T>(msg: T, lease: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    if let Some(id) = lease.and_then(|l| l.parse().ok()) {
        md.insert("containerd-lease", id);
    }
    req
}

/// A containerd lease that protects freshly written content from garbage collection
/// until the image that references it exists.
struct Lease {
    id: String,
}

impl Lease {
    async fn create(channel: &Channel) -> Result<Lease, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("pikube-import-{}-{nanos}", std::process::id());
        // Expires by itself if we die mid-import.
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            rfc3339_in(Duration::from_secs(3600)),
        )]);
        ctrd::leases_client::LeasesClient::new(channel.clone())
            .create(request(
                ctrd::CreateRequest {
                    id: id.clone(),
                    labels,
                },
                None,
            ))
            .await
            .map_err(|s| Error::rpc("containerd lease create", s))?;
        Ok(Lease { id })
    }

    async fn delete(self, channel: &Channel) {
        let req = request(
            ctrd::DeleteRequest {
                id: self.id.clone(),
                sync: false,
            },
            None,
        );
        if let Err(s) = ctrd::leases_client::LeasesClient::new(channel.clone())
            .delete(req)
            .await
        {
            tracing::warn!(lease = %self.id, error = %s, "delete import lease");
        }
    }
}

/// `now + d` as RFC 3339 (UTC, seconds), for containerd's gc.expire label.
fn rfc3339_in(d: Duration) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|n| n.as_secs())
        .unwrap_or_default()
        + d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes the plan's blobs (skipping those already stored) and creates the images.
async fn store(channel: &Channel, tar: &Path, plan: &Plan, lease: &str) -> Result<(), Error> {
    let mut content = ctrd::content_client::ContentClient::new(channel.clone());
    let mut missing = Vec::new();
    for blob in &plan.blobs {
        let info = content
            .info(request(
                ctrd::InfoRequest {
                    digest: blob.digest.clone(),
                },
                Some(lease),
            ))
            .await;
        match info {
            Ok(_) => {
                add_to_lease(channel, lease, &blob.digest).await?;
                if !blob.labels.is_empty() {
                    update_labels(&mut content, blob, lease).await?;
                }
            }
            Err(s) if s.code() == Code::NotFound => missing.push(blob),
            Err(s) => return Err(Error::rpc("containerd content info", s)),
        }
    }
    // In tar order, so a compressed tarball is decompressed once more, not once per blob
    // (the lease keeps early children safe until their parents are written).
    missing.sort_by_key(|b| match b.source {
        Source::Tar { offset } => offset,
        Source::Memory(_) => 0,
    });
    let mut cursor = Some(Cursor::new(tar, plan.compression));
    for blob in missing {
        write_blob(&mut content, &mut cursor, blob, lease).await?;
    }
    let mut images = ctrd::images_client::ImagesClient::new(channel.clone());
    for named in &plan.images {
        let image = ctrd::Image {
            name: named.name.clone(),
            labels: HashMap::from([(CRI_LABEL.to_string(), "managed".to_string())]),
            target: Some(descriptor(&named.target)),
            created_at: None,
            updated_at: None,
        };
        let created = images
            .create(request(
                ctrd::CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(request(
                        ctrd::UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(|s| Error::rpc("containerd image update", s))?;
            }
            Err(s) => return Err(Error::rpc("containerd image create", s)),
        }
    }
    Ok(())
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone(),
    }
}

/// Keeps existing content alive for the duration of the import.
async fn add_to_lease(channel: &Channel, lease: &str, digest: &str) -> Result<(), Error> {
    ctrd::leases_client::LeasesClient::new(channel.clone())
        .add_resource(request(
            ctrd::AddResourceRequest {
                id: lease.to_string(),
                resource: Some(ctrd::Resource {
                    id: digest.to_string(),
                    r#type: "content".to_string(),
                }),
            },
            None,
        ))
        .await
        .map_err(|s| Error::rpc("containerd lease add", s))?;
    Ok(())
}

/// Sets the GC reference labels on content that was already in the store.
async fn update_labels(
    content: &mut ctrd::content_client::ContentClient<Channel>,
    blob: &Blob,
    lease: &str,
) -> Result<(), Error> {
    let paths = blob.labels.keys().map(|k| format!("labels.{k}")).collect();
    content
        .update(request(
            ctrd::UpdateRequest {
                info: Some(ctrd::Info {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    created_at: None,
                    updated_at: None,
                    labels: blob.labels.clone(),
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            Some(lease),
        ))
        .await
        .map_err(|s| Error::rpc("containerd content update", s))?;
    Ok(())
}

/// Streams one blob into the content store and commits it with its labels; containerd
/// checks the digest on commit. Bytes from the tar are read by `cursor` on blocking
/// threads, one chunk ahead of the gRPC stream; the cursor is handed back for the next
/// blob (`None` after a failed read).
async fn write_blob(
    content: &mut ctrd::content_client::ContentClient<Channel>,
    cursor: &mut Option<Cursor>,
    blob: &Blob,
    lease: &str,
) -> Result<(), Error> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<ctrd::WriteContentRequest>(4);
    let reference = format!("{lease}-{}", blob.digest);
    let base = ctrd::WriteContentRequest {
        action: ctrd::WriteAction::Write as i32,
        r#ref: reference,
        total: blob.size,
        expected: blob.digest.clone(),
        ..Default::default()
    };
    let source = blob.source.clone();
    let labels = blob.labels.clone();
    let size = blob.size;
    let mut reader = cursor.take();
    let producer = tokio::spawn(async move {
        let mut offset = 0i64;
        while offset < size {
            let want = CHUNK.min((size - offset) as usize);
            let data = match &source {
                Source::Tar { offset: start } => {
                    let Some(mut r) = reader.take() else {
                        return (None, Err(Error::Config("tarball reader lost".to_string())));
                    };
                    let at = start + offset as u64;
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; want];
                        let result = r.read_exact_at(&mut buf, at).map(|()| buf);
                        (r, result)
                    })
                    .await;
                    match read {
                        Ok((r, Ok(buf))) => {
                            reader = Some(r);
                            buf
                        }
                        Ok((_, Err(e))) => return (None, Err(e)),
                        Err(e) => return (None, Err(Error::Config(format!("read tarball: {e}")))),
                    }
                }
                Source::Memory(bytes) => bytes
                    .get(offset as usize..offset as usize + want)
                    .unwrap_or_default()
                    .to_vec(),
            };
            let msg = ctrd::WriteContentRequest {
                offset,
                data,
                ..base.clone()
            };
            if tx.send(msg).await.is_err() {
                return (reader, Ok(())); // The call ended early; its status says why.
            }
            offset += want as i64;
        }
        let commit = ctrd::WriteContentRequest {
            action: ctrd::WriteAction::Commit as i32,
            offset,
            labels,
            ..base
        };
        let _ = tx.send(commit).await;
        (reader, Ok::<(), Error>(()))
    });
    let outcome = write_responses(content, request(rx, Some(lease))).await;
    let (reader, produced) = producer
        .await
        .map_err(|e| Error::Config(format!("content writer: {e}")))?;
    *cursor = reader;
    produced?;
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Config(format!(
            "content write of {} ended without a commit",
            blob.digest
        ))),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(Error::rpc("containerd content write", s)),
    }
}

/// Drives a content Write call; true when containerd acknowledged the commit.
async fn write_responses(
    content: &mut ctrd::content_client::ContentClient<Channel>,
    req: Request<futures::channel::mpsc::Receiver<ctrd::WriteContentRequest>>,
) -> Result<bool, tonic::Status> {
    let mut responses = content.write(req).await?.into_inner();
    let mut committed = false;
    while let Some(resp) = responses.next().await {
        if resp?.action == ctrd::WriteAction::Commit as i32 {
            committed = true;
        }
    }
    Ok(committed)
}

/// Waits until CRI's ImageStatus reports every imported name — with the new image id
/// (config digest) where it is known, so a re-import that changed a tag is seen too.
/// CRI learns of images from containerd's events, asynchronously. Skipped when the
/// socket has no CRI service.
async fn wait_cri_visible(channel: &Channel, images: &[Named]) -> Result<Vec<Imported>, Error> {
    let mut client = cri::image_service_client::ImageServiceClient::new(channel.clone());
    let start = Instant::now();
    let mut seen = Vec::new();
    for named in images {
        loop {
            let id = match cri_image_id(&mut client, &named.name).await? {
                CriImage::Id(id) => id,
                CriImage::Absent => String::new(),
                CriImage::NoCri => {
                    return Ok(images
                        .iter()
                        .map(|n| Imported {
                            name: n.name.clone(),
                            id: String::new(),
                        })
                        .collect())
                }
            };
            let current = !id.is_empty() && named.config.as_ref().is_none_or(|c| *c == id);
            if current {
                seen.push(Imported {
                    name: named.name.clone(),
                    id,
                });
                break;
            }
            if start.elapsed() > CRI_VISIBLE_TIMEOUT {
                return Err(Error::NotReady {
                    waited: start.elapsed(),
                    last: format!("CRI does not see imported image {}", named.name),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(seen)
}

/// What CRI's ImageStatus says of an image name.
enum CriImage {
    /// Present, with this image id.
    Id(String),
    /// Not present.
    Absent,
    /// The socket has no CRI image service.
    NoCri,
}

/// Asks CRI's ImageStatus for `name`.
async fn cri_image_id(
    client: &mut cri::image_service_client::ImageServiceClient<Channel>,
    name: &str,
) -> Result<CriImage, Error> {
    let req = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: name.to_string(),
            ..Default::default()
        }),
        verbose: false,
    };
    match client.image_status(req).await {
        Ok(resp) => Ok(match resp.into_inner().image {
            Some(image) => CriImage::Id(image.id),
            None => CriImage::Absent,
        }),
        Err(s) if s.code() == Code::Unimplemented => Ok(CriImage::NoCri),
        Err(s) => Err(Error::rpc("CRI ImageStatus", s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_rfc3339() {
        let s = rfc3339_in(Duration::from_secs(0));
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
