//! `GET /containerLogs/{ns}/{pod}/{container}`: a container's log file (CRI format,
//! `<RFC3339Nano> <stdout|stderr> <F|P> <text>`) as plain text, with kubelet's options
//! (follow, tailLines, sinceSeconds, sinceTime, timestamps, previous, limitBytes) and
//! its error messages. A followed log goes on in the new file when the log is rotated.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::Pod;
use pikube_runtime::cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::api::{container_status, runtime_id, AgentApi, Body, Failure};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// Largest piece of a log file read at once (CRI lines are at most 16 KiB).
const CHUNK: u64 = 1 << 20;
/// How often a followed container is checked for having exited.
const STATE_POLL: Duration = Duration::from_secs(1);

/// kubelet's log options (PodLogOptions).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LogOptions {
    /// Stream new lines until the container exits or the client goes.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC3339Nano time.
    pub timestamps: bool,
    /// The previous (terminated) attempt of the container.
    pub previous: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

fn flag(v: &str) -> bool {
    matches!(v, "true" | "1" | "True")
}

impl LogOptions {
    /// Parses a query string; a bad value is a 400 with the option named.
    pub fn parse(query: &str, now: DateTime<Utc>) -> Result<LogOptions, Failure> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| Failure::bad_request(format!("invalid query: {e}")))?;
        let mut o = LogOptions::default();
        let number = |k: &str, v: &str| {
            v.parse::<i64>()
                .map_err(|_| Failure::bad_request(format!("invalid {k}: {v:?}")))
        };
        for (k, v) in &pairs {
            match k.as_str() {
                "follow" => o.follow = flag(v),
                "timestamps" => o.timestamps = flag(v),
                "previous" => o.previous = flag(v),
                "tailLines" => o.tail_lines = Some(number(k, v)?.max(0) as usize),
                "limitBytes" => {
                    let n = number(k, v)?;
                    if n < 1 {
                        return Err(Failure::bad_request("limitBytes must be greater than zero"));
                    }
                    o.limit_bytes = Some(n as usize);
                }
                "sinceSeconds" => {
                    let n = number(k, v)?;
                    if n < 1 {
                        return Err(Failure::bad_request(
                            "sinceSeconds must be greater than zero",
                        ));
                    }
                    o.since = Some(now - chrono::Duration::seconds(n));
                }
                "sinceTime" => {
                    let t = DateTime::parse_from_rfc3339(v)
                        .map_err(|_| Failure::bad_request(format!("invalid sinceTime: {v:?}")))?;
                    o.since = Some(t.with_timezone(&Utc));
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine<'a> {
    /// The time as written (RFC3339Nano).
    pub time: &'a str,
    /// The time, parsed.
    pub at: DateTime<FixedOffset>,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A `P` (partial) line: the text continues in the next line.
    pub partial: bool,
    /// The text, without the newline.
    pub text: &'a [u8],
}

/// Parses one line (without its newline); None for a malformed one.
pub fn parse_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    let at = DateTime::parse_from_rfc3339(time).ok()?;
    let partial = tag.split(|b| *b == b':').any(|t| t == b"P");
    Some(LogLine {
        time,
        at,
        stream,
        partial,
        text,
    })
}

/// Renders lines as kubelet writes them: text (a partial line joins the next), with the
/// time in front when asked.
fn render(lines: &[LogLine<'_>], timestamps: bool, out: &mut Vec<u8>) {
    for l in lines {
        if timestamps {
            out.extend_from_slice(l.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(l.text);
        if !l.partial {
            out.push(b'\n');
        }
    }
}

/// The complete lines in `buf` (up to its last newline), parsed, and how many bytes they
/// took. Lines before `since` are dropped.
fn complete_lines(buf: &[u8], since: Option<DateTime<Utc>>) -> (Vec<LogLine<'_>>, usize) {
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = buf[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .filter(|l| since.is_none_or(|s| l.at >= s))
        .collect();
    (lines, end)
}

/// The last `n` whole lines (a run of partial lines and the full line ending it count
/// as one).
fn tail<'a, 'b>(lines: &'a [LogLine<'b>], n: usize) -> &'a [LogLine<'b>] {
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().rev() {
        if !l.partial {
            if seen == n {
                return &lines[i + 1..];
            }
            seen += 1;
        }
    }
    lines
}

/// Kubelet's choice of the container whose log is read (validateContainerLogStatus).
pub fn log_container_id(pod: &Pod, container: &str, previous: bool) -> Result<String, Failure> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let bad = |what: String| {
        Failure::bad_request(format!(
            "container {container:?} in pod {pod_name:?} {what}"
        ))
    };
    let status = container_status(pod, container).ok_or_else(|| bad("is not available".into()))?;
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.clone())
        .filter(|id| !id.is_empty());
    let state = status.state.clone().unwrap_or_default();
    let id = if previous {
        last.ok_or_else(|| {
            Failure::bad_request(format!(
                "previous terminated container {container:?} in pod {pod_name:?} not found"
            ))
        })?
    } else if state.running.is_some() {
        status.container_id.clone().unwrap_or_default()
    } else if let Some(t) = &state.terminated {
        match t.container_id.clone().filter(|i| !i.is_empty()) {
            Some(id) => id,
            None => last.ok_or_else(|| bad("is terminated".into()))?,
        }
    } else if let Some(id) = last {
        id
    } else if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        return Err(bad(match reason.as_str() {
            "ErrImagePull" => "is waiting to start: image can't be pulled".into(),
            "ImagePullBackOff" => "is waiting to start: trying and failing to pull image".into(),
            _ => format!("is waiting to start: {reason}"),
        }));
    } else {
        return Err(bad("is waiting to start - no logs yet".into()));
    };
    if id.is_empty() {
        return Err(bad("is waiting to start - no logs yet".into()));
    }
    Ok(runtime_id(&id).to_string())
}

/// Where container `id`'s log is, and whether it still runs (CRI ContainerStatus).
pub(super) async fn log_path(
    cri: &pikube_runtime::Cri,
    id: &str,
) -> Result<(String, bool), String> {
    let status = cri
        .runtime()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .status
        .ok_or("the runtime reports no status")?;
    Ok((
        status.log_path,
        status.state == cri::ContainerState::ContainerRunning as i32,
    ))
}

/// [`log_path`], failing with kubelet's not-found answer.
async fn log_file(cri: &pikube_runtime::Cri, id: &str) -> Result<(String, bool), Failure> {
    log_path(cri, id)
        .await
        .map_err(|e| Failure::not_found(format!("container {id} not found: {e}")))
}

/// The file now at `path` when it is no longer `file` (the log was rotated and the
/// runtime has opened a new one).
async fn replaced(path: &str, file: &tokio::fs::File) -> Option<tokio::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let now = tokio::fs::metadata(path).await.ok()?;
    let open = file.metadata().await.ok()?;
    if (now.dev(), now.ino()) == (open.dev(), open.ino()) {
        return None;
    }
    tokio::fs::File::open(path).await.ok()
}

/// Up to `max` bytes of `file` from `offset`.
async fn read_at(file: &mut tokio::fs::File, offset: u64, max: u64) -> std::io::Result<Vec<u8>> {
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    (&mut *file).take(max).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Where the line starts from which the last `n` whole lines of a `len`-byte log are
/// found: the file is read backwards in growing steps, not whole.
async fn tail_start(file: &mut tokio::fs::File, len: u64, n: usize) -> std::io::Result<u64> {
    let mut back = CHUNK;
    loop {
        let start = len.saturating_sub(back);
        let buf = read_at(file, start, len - start).await?;
        // Past the first newline: the first line may be cut.
        let skip = if start == 0 {
            0
        } else {
            buf.iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |i| i + 1)
        };
        let (lines, _) = complete_lines(&buf[skip..], None);
        if start == 0 || lines.iter().filter(|l| !l.partial).count() > n {
            return Ok(start + skip as u64);
        }
        back = back.saturating_mul(4);
    }
}

/// Sends `bytes` (cut at the byte limit); false when the client went or the limit is
/// reached.
async fn send(
    tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    mut bytes: Vec<u8>,
    left: &mut Option<usize>,
) -> bool {
    if let Some(n) = left {
        bytes.truncate(*n);
        *n -= bytes.len();
    }
    if !bytes.is_empty() && tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_err() {
        return false;
    }
    left.is_none_or(|n| n > 0)
}

/// Serves one log request.
pub async fn serve(
    api: &AgentApi,
    ns: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Result<Response<Body>, Failure> {
    let opts = LogOptions::parse(query, Utc::now())?;
    let p = api.pod(ns, pod).await?;
    let id = log_container_id(&p, container, opts.previous)?;
    let cri = api.cri().clone();
    let (path, running) = log_file(&cri, &id).await?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        Failure::not_found(format!(
            "cannot open the log of container {container:?}: {e}"
        ))
    })?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Failure::internal(format!("cannot read {path}: {e}")))?
        .len();
    // With tailLines only the end of the file is read.
    let (mut offset, first) = match opts.tail_lines {
        Some(n) => {
            let start = tail_start(&mut file, len, n)
                .await
                .map_err(|e| Failure::internal(format!("cannot read {path}: {e}")))?;
            let buf = read_at(&mut file, start, len - start)
                .await
                .map_err(|e| Failure::internal(format!("cannot read {path}: {e}")))?;
            (start, Some((buf, n)))
        }
        None => (0, None),
    };
    let (tx, rx) = mpsc::channel(16);
    let follow = opts.follow && running && !opts.previous;
    tokio::spawn(async move {
        let mut left = opts.limit_bytes;
        if let Some((buf, n)) = first {
            let (lines, used) = complete_lines(&buf, opts.since);
            let mut out = Vec::new();
            render(tail(&lines, n), opts.timestamps, &mut out);
            offset += used as u64;
            // Without follow, the tail is the last `n` lines at the time of the request,
            // not counting lines written since.
            if !send(&tx, out, &mut left).await || !follow {
                return;
            }
        }
        let mut checked = tokio::time::Instant::now();
        let mut exited = false;
        let mut next_file = None;
        loop {
            let chunk = match read_at(&mut file, offset, CHUNK).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = chunk.len() as u64 == CHUNK;
            let (lines, mut used) = complete_lines(&chunk, opts.since);
            if used == 0 && full {
                // No newline in a whole chunk: not a CRI log; skip it.
                used = chunk.len();
            }
            offset += used as u64;
            let mut out = Vec::new();
            render(&lines, opts.timestamps, &mut out);
            if !send(&tx, out, &mut left).await {
                return;
            }
            if full {
                continue;
            }
            if !follow || exited {
                return;
            }
            // A rotated log: the old file is read to its end once more, then the new one
            // from its start.
            if let Some(next) = next_file.take() {
                file = next;
                offset = 0;
                continue;
            }
            if let Some(next) = replaced(&path, &file).await {
                next_file = Some(next);
                continue;
            }
            if checked.elapsed() >= STATE_POLL {
                checked = tokio::time::Instant::now();
                // One more read after the container is gone picks up its last lines.
                exited = !matches!(log_file(&cri, &id).await, Ok((_, true)));
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2026-01-01T10:00:00.000000001Z stdout F one\n\
2026-01-01T10:00:01.5Z stderr F two\n\
2026-01-01T10:00:02Z stdout P thr\n\
2026-01-01T10:00:02.1Z stdout F ee\n\
2026-01-01T10:00:03Z stdout F four\n\
2026-01-01T10:00:04Z stdout F half-writ";

    fn rendered(lines: &[LogLine<'_>], ts: bool) -> String {
        let mut out = Vec::new();
        render(lines, ts, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_parse_join_partials_and_stop_at_the_last_newline() {
        let (lines, used) = complete_lines(LOG, None);
        assert_eq!(
            used,
            LOG.len() - "2026-01-01T10:00:04Z stdout F half-writ".len()
        );
        assert_eq!(rendered(&lines, false), "one\ntwo\nthree\nfour\n");
        assert_eq!(lines[1].stream, "stderr");
        assert!(rendered(&lines[..1], true).starts_with("2026-01-01T10:00:00.000000001Z one\n"));
        assert!(parse_line(b"garbage").is_none());
        assert_eq!(
            parse_line(b"2026-01-01T10:00:00Z stdout F").unwrap().text,
            b""
        );
    }

    #[test]
    fn tail_counts_whole_lines_and_since_filters_by_time() {
        let (lines, _) = complete_lines(LOG, None);
        assert_eq!(rendered(tail(&lines, 2), false), "three\nfour\n");
        assert_eq!(rendered(tail(&lines, 0), false), "");
        assert_eq!(rendered(tail(&lines, 10), false), "one\ntwo\nthree\nfour\n");
        let since = DateTime::parse_from_rfc3339("2026-01-01T10:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let (lines, _) = complete_lines(LOG, Some(since));
        assert_eq!(rendered(&lines, false), "two\nthree\nfour\n");
    }

    #[tokio::test]
    async fn tail_reads_only_the_end_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!("2026-01-01T10:00:00Z stdout F line number {i}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let mut f = tokio::fs::File::open(&path).await.unwrap();
        let len = text.len() as u64;
        assert!(len > CHUNK);
        let start = tail_start(&mut f, len, 3).await.unwrap();
        assert!(
            start > 0 && len - start <= CHUNK,
            "only the last chunk is read"
        );
        let buf = read_at(&mut f, start, len - start).await.unwrap();
        let (lines, used) = complete_lines(&buf, None);
        assert_eq!(used as u64, len - start);
        let mut out = Vec::new();
        render(tail(&lines, 3), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "line number 39997\nline number 39998\nline number 39999\n"
        );
        assert_eq!(tail_start(&mut f, len, 1_000_000).await.unwrap(), 0);
    }

    #[test]
    fn options_parse_like_kubelet() {
        let now = Utc::now();
        let o = LogOptions::parse(
            "follow=true&tailLines=3&timestamps=true&previous=false&limitBytes=10&sinceSeconds=5",
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(3), Some(10)));
        assert_eq!(o.since, Some(now - chrono::Duration::seconds(5)));
        assert!(LogOptions::parse("tailLines=x", now).is_err());
        assert!(LogOptions::parse("limitBytes=0", now).is_err());
        let o = LogOptions::parse("sinceTime=2026-01-01T10%3A00%3A01Z", now).unwrap();
        assert!(o.since.is_some());
    }

    #[test]
    fn the_log_container_follows_kubelets_rules() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [
                {"name": "run", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
                 "containerID": "containerd://new", "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://old"}}},
                {"name": "wait", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]}
        }))
        .unwrap();
        assert_eq!(log_container_id(&pod, "run", false).unwrap(), "new");
        assert_eq!(log_container_id(&pod, "run", true).unwrap(), "old");
        assert_eq!(
            log_container_id(&pod, "wait", false).unwrap_err().message,
            "container \"wait\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            log_container_id(&pod, "wait", true).unwrap_err().message,
            "previous terminated container \"wait\" in pod \"p\" not found"
        );
    }
}
