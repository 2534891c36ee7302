//! Runs the [`Recorder`]: feeds it the engine's events and periodic samples, logs every event,
//! and writes each finished [`CallRecord`] to the log (INFO, one line) and, when configured, to
//! `DIR/calls-YYYY-MM-DD.jsonl` (UTC day of the end; one JSON object per line).
//!
//! [`Observed`] wraps the engine the gRPC server drives so that every Terminate answer (the
//! call's exact final counters) and every GetCall/ListCalls answer reaches the recorder too.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{
    ApiError, CallControl, CallCreated, CallEvent, CallEventKind, CallInfo, CreateCall,
    InternalLegReplaced, InternalLegSpec, LegKind, Load, RefusedReason,
};

use super::logs::log_event;
use super::record::{CallRecord, Recorder, RecorderLimits};

/// Records waiting for the file writer; beyond it records go to the log only (and are counted).
const WRITE_QUEUE: usize = 4096;

#[derive(Clone, Debug)]
pub struct CallLogConfig {
    /// Where the JSON lines go; `None`: the log only.
    pub dir: Option<PathBuf>,
    /// How often live calls' statistics are sampled (for calls that end without Terminate).
    pub poll_interval: Duration,
    pub limits: RecorderLimits,
}

impl Default for CallLogConfig {
    fn default() -> Self {
        CallLogConfig {
            dir: None,
            poll_interval: Duration::from_secs(2),
            limits: RecorderLimits::default(),
        }
    }
}

enum Msg {
    Line { day: String, json: String },
    Close,
}

struct Shared {
    recorder: Mutex<Recorder>,
    file: Option<crossbeam_channel::Sender<Msg>>,
    /// Records the file writer could not take (queue full).
    not_written: AtomicU64,
}

impl Shared {
    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // Diagnostics only: after a panic elsewhere the data is still consistent enough.
        self.recorder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, rec: CallRecord) {
        let json = match serde_json::to_string(&rec) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(call_id = %rec.call_id, error = %e, "cannot encode call record");
                return;
            }
        };
        tracing::info!(call_id = %rec.call_id, cause = rec.cause, record = %json, "call record");
        if let Some(tx) = &self.file {
            let line = Msg::Line {
                day: rec.day().to_string(),
                json,
            };
            if tx.try_send(line).is_err() {
                let n = self.not_written.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(call_id = %rec.call_id, not_written = n, "call log writer is behind; record only in the log");
            }
        }
    }

    fn emit_all(&self, recs: Vec<CallRecord>) {
        for r in recs {
            self.emit(r);
        }
    }
}

/// The running call log. Start it before the control plane serves, so it sees every call.
pub struct CallLog {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl CallLog {
    /// Subscribe to `engine`'s events and start sampling (needs a tokio runtime). Creates
    /// `cfg.dir` if needed.
    pub fn start<C: CallControl>(engine: Arc<C>, cfg: CallLogConfig) -> std::io::Result<CallLog> {
        let (file, writer) = match &cfg.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let (tx, rx) = crossbeam_channel::bounded(WRITE_QUEUE);
                let dir = dir.clone();
                let writer = std::thread::Builder::new()
                    .name("relay-calllog".into())
                    .spawn(move || write_lines(&dir, rx))?;
                (Some(tx), Some(writer))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            recorder: Mutex::new(Recorder::new(cfg.limits)),
            file,
            not_written: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let events = engine.subscribe();
        let task = tokio::spawn(run(
            engine,
            Arc::clone(&shared),
            events,
            cfg.poll_interval,
            stop_rx,
        ));
        Ok(CallLog {
            shared,
            task: Some(task),
            writer,
            stop,
        })
    }

    /// `engine`, reporting what its answers reveal to this call log.
    pub fn observe<C: CallControl>(&self, engine: Arc<C>) -> Observed<C> {
        Observed {
            inner: engine,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Calls seen created and not yet seen ended.
    pub fn live_calls(&self) -> usize {
        self.shared.recorder().live()
    }

    /// Sample every live call now (before ending them all, so records are as fresh as can be).
    pub async fn sample_now<C: CallControl>(&self, engine: &C) {
        sample(engine, &self.shared).await;
    }

    /// Wait (at most `wait`) until every tracked call's end was seen, then write what is left
    /// and stop. Call after the engine ended its calls.
    pub async fn finish(mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.shared.recorder().live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let left = self.shared.recorder().flush();
        self.shared.emit_all(left);
        self.close_writer().await;
    }

    async fn close_writer(&mut self) {
        // An explicit Close rather than dropping the senders: Observed wrappers held by the
        // control plane keep theirs. Records emitted after this go to the log only.
        let tx = self.shared.file.clone();
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(tx) = tx {
                    let _ = tx.send(Msg::Close);
                }
                w.join()
            })
            .await;
        }
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run<C: CallControl>(
    engine: Arc<C>,
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<CallEvent>,
    poll_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(ev) => on_event(&engine, &shared, ev),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "call log fell behind the engine's events; some call records will be incomplete");
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                sample(&*engine, &shared).await;
            }
            _ = super::stopped(&mut stop) => return,
        }
    }
}

fn on_event<C: CallControl>(engine: &Arc<C>, shared: &Arc<Shared>, ev: CallEvent) {
    log_event(&ev);
    let is_created = matches!(ev.kind, CallEventKind::Created);
    let record = shared.recorder().on_event(&ev);
    if let Some(r) = record {
        shared.emit(r);
    }
    if is_created {
        // Who and which direction: the event does not say, the engine does.
        let (engine, shared) = (Arc::clone(engine), Arc::clone(shared));
        tokio::spawn(async move {
            if let Ok(info) = engine.get_call(ev.call_id).await {
                shared.recorder().on_info(info, SystemTime::now());
            }
        });
    }
}

async fn sample<C: CallControl>(engine: &C, shared: &Shared) {
    let at = SystemTime::now();
    match engine.list_calls().await {
        Ok(calls) => {
            for c in calls.iter().filter(|c| super::logs::call_debug(&c.call_id)) {
                super::logs::log_call_stats(c);
            }
            let lost = shared.recorder().on_sample(calls, at);
            for r in &lost {
                tracing::warn!(call_id = %r.call_id, "call vanished without an end event (event stream lagged)");
            }
            shared.emit_all(lost);
        }
        // The engine is stopping; the end events tell the rest.
        Err(e) => tracing::debug!(error = %e, "call log: cannot sample calls"),
    }
}

/// Append each line to `dir/calls-<day>.jsonl`, switching files when the day changes.
fn write_lines(dir: &Path, msgs: crossbeam_channel::Receiver<Msg>) {
    let mut current: Option<(String, File)> = None;
    for msg in msgs {
        let Msg::Line { day, json } = msg else { return };
        if current.as_ref().is_none_or(|(d, _)| *d != day) {
            let path = dir.join(format!("calls-{day}.jsonl"));
            match File::options().create(true).append(true).open(&path) {
                Ok(f) => current = Some((day, f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open call log file");
                    current = None;
                    continue;
                }
            }
        }
        if let Some((_, f)) = current.as_mut() {
            let mut bytes = json.into_bytes();
            bytes.push(b'\n');
            // One write per record so concurrent readers never see half a line.
            if let Err(e) = f.write_all(&bytes) {
                tracing::error!(error = %e, "cannot write call log record");
                current = None;
            }
        }
    }
}

/// A [`CallControl`] that forwards to `C` and shows the call log what the answers reveal.
pub struct Observed<C> {
    inner: Arc<C>,
    shared: Arc<Shared>,
}

impl<C> Observed<C> {
    fn seen(&self, info: &CallInfo) {
        self.shared
            .recorder()
            .on_info(info.clone(), SystemTime::now());
    }
}

impl<C: CallControl> CallControl for Observed<C> {
    async fn create_call(&self, req: CreateCall) -> Result<CallCreated, ApiError> {
        self.inner.create_call(req).await
    }

    async fn set_remote_description(
        &self,
        call_id: String,
        leg: LegKind,
        sdp: String,
    ) -> Result<CallInfo, ApiError> {
        let info = self.inner.set_remote_description(call_id, leg, sdp).await?;
        self.seen(&info);
        Ok(info)
    }

    async fn open_gate(&self, call_id: String) -> Result<CallInfo, ApiError> {
        let info = self.inner.open_gate(call_id).await?;
        self.seen(&info);
        Ok(info)
    }

    async fn terminate(
        &self,
        call_id: String,
        reason: String,
    ) -> Result<Option<CallInfo>, ApiError> {
        let result = self.inner.terminate(call_id, reason).await;
        if let Ok(Some(info)) = &result {
            self.shared
                .recorder()
                .on_final_info(info.clone(), SystemTime::now());
        }
        result
    }

    async fn recording(
        &self,
        call_id: String,
        op: crate::api::RecordingOp,
    ) -> Result<Option<crate::api::RecordingStatus>, ApiError> {
        self.inner.recording(call_id, op).await
    }

    async fn listen(
        &self,
        call_id: String,
        op: crate::api::ListenOp,
    ) -> Result<Option<crate::api::ListenStatus>, ApiError> {
        self.inner.listen(call_id, op).await
    }

    async fn replace_internal_leg(
        &self,
        call_id: String,
        internal: InternalLegSpec,
    ) -> Result<InternalLegReplaced, ApiError> {
        let r = self.inner.replace_internal_leg(call_id, internal).await?;
        self.seen(&r.call);
        Ok(r)
    }

    async fn get_call(&self, call_id: String) -> Result<CallInfo, ApiError> {
        let info = self.inner.get_call(call_id).await?;
        self.seen(&info);
        Ok(info)
    }

    async fn list_calls(&self) -> Result<Vec<CallInfo>, ApiError> {
        let calls = self.inner.list_calls().await?;
        for c in &calls {
            self.seen(c);
        }
        Ok(calls)
    }

    async fn load(&self) -> Result<Load, ApiError> {
        self.inner.load().await
    }

    fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.inner.subscribe()
    }

    fn set_draining(&self, draining: bool) {
        self.inner.set_draining(draining);
    }

    fn set_limits(
        &self,
        capacity: Option<u32>,
        busy_percent: Option<u32>,
    ) -> Result<crate::api::Limits, ApiError> {
        self.inner.set_limits(capacity, busy_percent)
    }

    async fn end_all_drained(&self) -> Result<usize, ApiError> {
        self.inner.end_all_drained().await
    }

    fn count_refused(&self, reason: RefusedReason) {
        self.inner.count_refused(reason);
    }
}
