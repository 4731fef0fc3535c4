//! Import of image tarballs into containerd's `k8s.io` namespace — what
//! `ctr -n k8s.io images import` does — through containerd's content, images and leases
//! services (containerd-client): blobs are written to the content store with the GC
//! reference labels, then the image names point at their manifests.
//!
//! Unpacking into the snapshotter is left to CRI: containerd's CRI plugin unpacks an
//! image on first use (CreateContainer / RunPodSandbox), so an import does not pay for
//! snapshots of images that never run. Imports wait until CRI's ImageStatus sees every
//! imported name, so the agent can rely on them right away.

mod layout;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as ctrd;
use containerd_client::types::Descriptor;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::cri::{unix_channel, v1 as cri};
use crate::Error;
use layout::{Blob, Desc, Named, Plan, Source};

pub use layout::normalize_ref;

/// The containerd namespace CRI (and so Kubernetes) uses.
pub const NAMESPACE: &str = "k8s.io";
/// Label CRI (containerd 1.7+) puts on the images it manages; set on imports too.
const CRI_LABEL: &str = "io.cri-containerd.image";
/// Bytes per content write message.
const CHUNK: usize = 1 << 20;
/// How long an import waits for CRI to see the imported images.
const CRI_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Imports one tarball (OCI image layout, or a `docker save` archive) into namespace
/// `k8s.io` of the containerd at `socket`. Returns the image references created or
/// updated, normalized (`localhost/pause:3.9`, `docker.io/library/x:latest`).
pub async fn import_tarball(socket: &Path, tar: &Path) -> Result<Vec<String>, Error> {
    let path = tar.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || layout::plan(&path))
        .await
        .map_err(|e| Error::Config(format!("read tarball: {e}")))??;
    let channel = unix_channel(socket).await?;
    let lease = Lease::create(&channel).await?;
    let result = store(&channel, tar, &plan, &lease.id).await;
    lease.delete(&channel).await;
    result?;
    wait_cri_visible(&channel, &plan.images).await?;
    let refs: Vec<String> = plan.images.iter().map(|i| i.name.clone()).collect();
    tracing::info!(tar = %tar.display(), images = ?refs, "imported image tarball");
    Ok(refs)
}

/// Imports every `*.tar` file of `dir` (the air-gap directory
/// `<data-dir>/agent/images/`, as in k3s), in name order. A missing directory imports
/// nothing; one bad tarball fails the call (after the others are imported) with its error.
pub async fn import_dir(socket: &Path, dir: &Path) -> Result<Vec<String>, Error> {
    let list_dir = dir.to_path_buf();
    let tars = tokio::task::spawn_blocking(move || tarballs_in(&list_dir))
        .await
        .map_err(|e| Error::Config(format!("list {}: {e}", dir.display())))??;
    let mut refs = Vec::new();
    let mut first_error = None;
    for tar in tars {
        match import_tarball(socket, &tar).await {
            Ok(r) => refs.extend(r),
            Err(e) => {
                tracing::error!(tar = %tar.display(), error = %e, "image import failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(refs),
    }
}

/// The `*.tar` files of a directory, sorted; none when it does not exist.
fn tarballs_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut tars = Vec::new();
    for entry in read {
        let path = entry.map_err(|e| Error::io("list", dir, e))?.path();
        if path.extension().is_some_and(|x| x == "tar") && path.is_file() {
            tars.push(path);
        }
    }
    tars.sort();
    Ok(tars)
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
            Err(s) if s.code() == Code::NotFound => {
                write_blob(&mut content, tar, blob, lease).await?
            }
            Err(s) => return Err(Error::rpc("containerd content info", s)),
        }
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
/// checks the digest on commit.
async fn write_blob(
    content: &mut ctrd::content_client::ContentClient<Channel>,
    tar: &Path,
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
    let tar = tar.to_path_buf();
    let source = blob.source.clone();
    enum Chunks {
        File(tokio::fs::File),
        Memory(Vec<u8>),
    }
    let labels = blob.labels.clone();
    let size = blob.size;
    let producer = tokio::spawn(async move {
        let mut offset = 0i64;
        let mut reader = match source {
            Source::Tar { offset: start } => {
                let mut f = tokio::fs::File::open(&tar)
                    .await
                    .map_err(|e| Error::io("open", &tar, e))?;
                f.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| Error::io("read", &tar, e))?;
                Chunks::File(f)
            }
            Source::Memory(bytes) => Chunks::Memory(bytes),
        };
        while offset < size {
            let want = CHUNK.min((size - offset) as usize);
            let data = match &mut reader {
                Chunks::File(f) => {
                    let mut buf = vec![0; want];
                    f.read_exact(&mut buf)
                        .await
                        .map_err(|e| Error::io("read", &tar, e))?;
                    buf
                }
                Chunks::Memory(bytes) => bytes
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
                return Ok(()); // The call ended early; its status says why.
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
        Ok::<(), Error>(())
    });
    let outcome = write_responses(content, request(rx, Some(lease))).await;
    let produced = producer
        .await
        .map_err(|e| Error::Config(format!("content writer: {e}")))?;
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
async fn wait_cri_visible(channel: &Channel, images: &[Named]) -> Result<(), Error> {
    let mut client = cri::image_service_client::ImageServiceClient::new(channel.clone());
    let start = Instant::now();
    for named in images {
        loop {
            let req = cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: named.name.clone(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let seen = match client.image_status(req).await {
                Ok(resp) => resp.into_inner().image,
                Err(s) if s.code() == Code::Unimplemented => return Ok(()),
                Err(s) => return Err(Error::rpc("CRI ImageStatus", s)),
            };
            let current = match (&seen, &named.config) {
                (Some(image), Some(config)) => &image.id == config,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if current {
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
    Ok(())
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

    #[test]
    fn only_tar_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.tar", "a.tar", "notes.txt", "c.tar.gz"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let names: Vec<_> = tarballs_in(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.tar", "b.tar"]);
        assert!(tarballs_in(&dir.path().join("absent")).unwrap().is_empty());
    }
}
