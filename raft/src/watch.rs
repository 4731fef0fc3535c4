//! Watchers: each gets the stored events from its start revision, then live events, with
//! no gap and in order. Live delivery goes through a bounded channel; a watcher that lets
//! it fill up is cancelled with [`Error::WatchLagged`] instead of growing memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::mvcc;
use crate::types::{Event, Revision};

/// Revisions (batches of events) a live watcher may have queued before it is cancelled.
pub const WATCH_CHANNEL_CAPACITY: usize = 4096;

/// How many stored events a watcher reads per step while catching up.
const REPLAY_CHUNK: usize = 1024;

/// The key range a watcher covers.
#[derive(Clone, Debug)]
pub struct KeyRange {
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
}

impl KeyRange {
    /// A single key (`range_end` None) or `[key, range_end)` (empty end = no upper bound).
    pub fn new(key: Vec<u8>, range_end: Option<Vec<u8>>) -> Self {
        KeyRange { key, range_end }
    }

    /// Whether `k` is inside the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.range_end {
            None => k == self.key.as_slice(),
            Some(e) => k >= self.key.as_slice() && (e.is_empty() || k < e.as_slice()),
        }
    }
}

struct Slot {
    range: KeyRange,
    tx: mpsc::Sender<Vec<Event>>,
    lagged: Arc<AtomicBool>,
}

/// The registry of live watchers; the writer publishes each applied revision to it.
#[derive(Default)]
pub struct Hub {
    slots: Vec<Slot>,
}

impl Hub {
    /// Adds a live watcher and returns its receiving end and lag flag.
    pub fn register(&mut self, range: KeyRange) -> (mpsc::Receiver<Vec<Event>>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        let lagged = Arc::new(AtomicBool::new(false));
        self.slots.push(Slot {
            range,
            tx,
            lagged: lagged.clone(),
        });
        (rx, lagged)
    }

    /// Delivers the events of one revision to every watcher whose range they touch.
    pub fn publish(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.slots.retain(|slot| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| slot.range.contains(&e.kv.key))
                .cloned()
                .collect();
            if mine.is_empty() {
                return !slot.tx.is_closed();
            }
            match slot.tx.try_send(mine) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.lagged.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Drops every watcher (store shutdown).
    pub fn close_all(&mut self) {
        self.slots.clear();
    }

    /// Cancels every watcher as fallen behind (the state was replaced by a snapshot), so
    /// each watches again from the revision it had reached.
    pub fn cancel_all(&mut self) {
        for slot in self.slots.drain(..) {
            slot.lagged.store(true, Ordering::SeqCst);
        }
    }

    /// Number of registered watchers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Source of stored events for the catch-up phase.
pub trait EventSource: Send + Sync + 'static {
    /// The sled tree holding the events.
    fn tree(&self) -> sled::Tree;
    /// The current compaction point.
    fn compacted(&self) -> Revision;
}

enum Phase {
    Replay { next: Revision, live_from: Revision },
    Live,
    Done,
}

type ReplayFuture = Pin<Box<dyn std::future::Future<Output = Result<(Vec<Event>, bool)>> + Send>>;

/// An ordered, gap-free stream of events for one key range. Ends after yielding an error.
pub struct Watcher {
    range: KeyRange,
    source: Arc<dyn EventSource>,
    phase: Phase,
    buffered: VecDeque<Event>,
    replaying: Option<ReplayFuture>,
    rx: mpsc::Receiver<Vec<Event>>,
    lagged: Arc<AtomicBool>,
}

impl Watcher {
    /// A watcher that replays stored events `[start, live_from)` and then reads `rx`.
    pub(crate) fn new(
        range: KeyRange,
        source: Arc<dyn EventSource>,
        start: Revision,
        live_from: Revision,
        rx: mpsc::Receiver<Vec<Event>>,
        lagged: Arc<AtomicBool>,
    ) -> Self {
        let phase = if start < live_from {
            Phase::Replay {
                next: start,
                live_from,
            }
        } else {
            Phase::Live
        };
        Watcher {
            range,
            source,
            phase,
            buffered: VecDeque::new(),
            replaying: None,
            rx,
            lagged,
        }
    }
}

impl Stream for Watcher {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Replay { next, live_from } => {
                    if this.replaying.is_none() {
                        if this.source.compacted() >= next {
                            this.phase = Phase::Done;
                            let e = Error::Compacted {
                                requested: next,
                                compacted: this.source.compacted(),
                            };
                            return Poll::Ready(Some(Err(e)));
                        }
                        let source = this.source.clone();
                        this.replaying = Some(Box::pin(async move {
                            tokio::task::spawn_blocking(move || {
                                mvcc::events_between(&source.tree(), next, live_from, REPLAY_CHUNK)
                            })
                            .await
                            .map_err(|e| Error::Storage(format!("watch replay task: {e}")))?
                        }));
                    }
                    let Some(fut) = this.replaying.as_mut() else {
                        continue;
                    };
                    match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(res) => {
                            this.replaying = None;
                            match res {
                                Err(e) => {
                                    this.phase = Phase::Done;
                                    return Poll::Ready(Some(Err(e)));
                                }
                                Ok((events, more)) => {
                                    let last = events.last().map(|e| e.kv.mod_revision);
                                    let range = &this.range;
                                    this.buffered.extend(
                                        events.into_iter().filter(|e| range.contains(&e.kv.key)),
                                    );
                                    this.phase = match last {
                                        Some(rev) if more && rev + 1 < live_from => Phase::Replay {
                                            next: rev + 1,
                                            live_from,
                                        },
                                        _ => Phase::Live,
                                    };
                                }
                            }
                        }
                    }
                }
                Phase::Live => match this.rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(events)) => this.buffered.extend(events),
                    Poll::Ready(None) => {
                        this.phase = Phase::Done;
                        let err = if this.lagged.load(Ordering::SeqCst) {
                            Error::WatchLagged
                        } else {
                            Error::Shutdown
                        };
                        return Poll::Ready(Some(Err(err)));
                    }
                },
            }
        }
    }
}
