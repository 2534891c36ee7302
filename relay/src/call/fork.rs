//! Forks of a call's media: copies of what each direction forwards, taken at the two points
//! where Opus RTP crosses the relay. Two kinds: recording to files (see [`crate::record`]) and
//! a supervisor's live listen-in over WebRTC (see [`crate::listen`], on a socket of its own);
//! whisper/barge (which need mixing) will be more entries here.
//!
//! The call touches this module in a handful of one-line hooks, so it moves as a unit:
//! - `media.rs`: [`Forks::on_rtp`] where WhatsApp's RTP is forwarded inward (the consumer)
//!   and where RTP is sent to WhatsApp (the agent, after the gate and prebuffer);
//! - `mod.rs`: [`Forks::tick`] after every input (the call's clock), [`Forks::observe`] on
//!   every event the call reports (gate, DTMF, transfer), [`Call::end_forks`] when it ends.
//!
//! Per packet and per fork: a check, one clock conversion, the header and payload written
//! into the shard's ring toward the disk writer (recording); a copy, a header rewrite and an SRTP protect
//! into the call's outbox (listen-in). No allocation, no lock, no system call.

use std::sync::Arc;
use std::time::Instant;

use crate::api::{
    CallEventKind, EndCause, LegKind, ListenChange, ListenMode, ListenStatus, RecordingChange,
    RecordingFiles, RecordingState, RecordingStatus,
};
use crate::listen::{ListenParams, ListenSession, STOPPED_BY_REQUEST};
use crate::net::{Outbox, SocketRef};
use crate::record::{Ctrl, Direction, Note, OpenRecording, RecorderLink, clock_at};
use crate::wire::rtp::RtpHeader;

use super::{Call, CallError};

/// What the engine asks of a call's recording. `Start` carries the files, already created on
/// the control plane (never on a shard).
pub enum RecordRequest {
    Start {
        open: Box<OpenRecording>,
        link: Arc<RecorderLink>,
    },
    Stop,
    Pause,
    Resume,
    Status,
}

/// What the engine asks of a call's listen-in. `Start` carries the fork's socket, already
/// bound on the control plane and attached to the call's socket list by the shard.
pub enum ListenRequest {
    Start {
        offer_sdp: String,
        mode: ListenMode,
        socket: SocketRef,
        local: std::net::SocketAddr,
        /// The address the supervisor reaches the socket at (advertised internal address).
        advertised: std::net::SocketAddr,
    },
    Stop,
    Status,
}

/// The call's forks. Empty (`None`s and a clock) on a call nobody records or listens to.
#[derive(Default)]
pub struct Forks {
    recording: Option<Box<RecordingFork>>,
    /// The last recording's final state, so a repeated stop answers the same.
    last: Option<Box<RecordingStatus>>,
    /// The call's latest `now`: events carry no time of their own.
    clock: Option<Instant>,
    /// A supervisor's live listen-in (one at a time; a new offer replaces it).
    listen: Option<Box<ListenSession>>,
    /// The last listen-in's final state, for a repeated stop.
    listen_last: Option<Box<ListenStatus>>,
}

struct RecordingFork {
    id: u64,
    link: Arc<RecorderLink>,
    started: Instant,
    paused: bool,
    files: RecordingFiles,
    dropped: u64,
    closed: bool,
}

impl Forks {
    /// One forwarded RTP packet (`packet` holds the plaintext header and payload) of the
    /// `opus` payload type or not (telephone-events reach the sidecar through [`observe`]).
    ///
    /// [`observe`]: Forks::observe
    #[inline]
    pub(super) fn on_rtp(
        &mut self,
        dir: Direction,
        now: Instant,
        hdr: &RtpHeader,
        packet: &[u8],
        opus: bool,
        out: &mut impl Outbox,
    ) {
        if !opus {
            return;
        }
        if let Some(l) = self.listen.as_deref_mut() {
            l.forward(dir, now, hdr, packet, out);
        }
        let Some(r) = self.recording.as_deref_mut() else {
            return;
        };
        if r.paused {
            return;
        }
        let Some(payload) = packet.get(hdr.payload_range()) else {
            return;
        };
        let clock = clock_at(now, r.started);
        if !r.link.push(r.id, dir, hdr.ssrc, hdr.ts, clock, payload) {
            r.dropped += 1;
        }
    }

    /// The call's clock after an input.
    #[inline]
    pub(super) fn tick(&mut self, now: Instant) {
        self.clock = Some(now);
    }

    /// An event the call reports: the ones a recording's sidecar keeps go to the writer.
    pub(super) fn observe(&mut self, ev: &CallEventKind) {
        let Some(r) = self.recording.as_deref() else {
            return;
        };
        let note = match ev {
            CallEventKind::GateOpened => Note::GateOpened,
            CallEventKind::DtmfReceived { from, digit } => Note::Dtmf {
                from: direction(*from),
                digit: *digit,
            },
            CallEventKind::InternalLegReplaced { previous, remote } => Note::Transfer {
                previous: *previous,
                remote: *remote,
            },
            _ => return,
        };
        let clock = clock_at(self.now(), r.started);
        r.link.send(Ctrl::Note {
            id: r.id,
            clock,
            note,
        });
    }

    /// The listen-in's socket, if the call has one running: datagrams on it go to
    /// [`Forks::on_listen_datagram`].
    pub(super) fn listen_socket(&self) -> Option<SocketRef> {
        self.listen.as_deref().map(ListenSession::socket)
    }

    /// Is `from` the listening supervisor's nominated address?
    pub(super) fn listen_knows(&self, from: std::net::SocketAddr) -> bool {
        self.listen.as_deref().is_some_and(|l| l.knows_source(from))
    }

    /// A datagram on the listen-in's socket (the supervisor's checks, DTLS, RTCP).
    pub(super) fn on_listen_datagram(
        &mut self,
        now: Instant,
        from: std::net::SocketAddr,
        buf: &mut [u8],
        out: &mut impl Outbox,
    ) {
        if let Some(l) = self.listen.as_deref_mut() {
            l.handle_datagram(now, from, buf, out);
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.listen.as_deref().and_then(ListenSession::poll_timeout)
    }

    pub(super) fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if let Some(l) = self.listen.as_deref_mut() {
            l.handle_timeout(now, out);
        }
    }

    /// After any input: report the listen-in's changes, and retire it once stopped. Returns
    /// the retired session's socket, for the call to give back.
    #[must_use]
    pub(super) fn report(
        &mut self,
        events: &mut std::collections::VecDeque<CallEventKind>,
    ) -> Option<SocketRef> {
        let l = self.listen.as_deref_mut()?;
        while let Some(change) = l.poll_change() {
            events.push_back(CallEventKind::Listen {
                change,
                status: Box::new(l.status()),
            });
        }
        if !l.is_stopped() {
            return None;
        }
        let socket = l.socket();
        self.listen_last = Some(Box::new(l.status()));
        self.listen = None;
        Some(socket)
    }

    /// The call's time now: its last input's `now`, or the real clock if that is later (an
    /// event raised outside an input).
    fn now(&self) -> Instant {
        let real = Instant::now();
        self.clock.map_or(real, |c| c.max(real))
    }

    /// Stop the recording (if any) and return its final state.
    fn stop(&mut self, now: Instant, reason: &str) -> Option<RecordingStatus> {
        let mut r = self.recording.take()?;
        r.link.send(Ctrl::Close {
            id: r.id,
            clock: clock_at(now, r.started),
            reason: reason.to_string(),
        });
        r.closed = true;
        let status = r.status(RecordingState::Stopped);
        self.last = Some(Box::new(status.clone()));
        Some(status)
    }
}

impl RecordingFork {
    fn status(&self, state: RecordingState) -> RecordingStatus {
        RecordingStatus {
            state,
            files: self.files.clone(),
            dropped_packets: self.dropped,
        }
    }

    fn state(&self) -> RecordingState {
        if self.paused {
            RecordingState::Paused
        } else {
            RecordingState::Recording
        }
    }
}

impl Drop for RecordingFork {
    /// A call dropped without ending (a shard stopping) still finishes its files.
    fn drop(&mut self) {
        if !self.closed {
            self.link.send(Ctrl::Close {
                id: self.id,
                clock: clock_at(Instant::now(), self.started),
                reason: "call removed".into(),
            });
        }
    }
}

fn direction(leg: LegKind) -> Direction {
    match leg {
        LegKind::WhatsApp => Direction::Consumer,
        LegKind::Internal => Direction::Agent,
    }
}

impl Call {
    /// Start, stop, pause, resume or read the call's recording (idempotent; see
    /// [`crate::api::RecordingOp`]).
    pub fn record(
        &mut self,
        req: RecordRequest,
        now: Instant,
    ) -> Result<Option<RecordingStatus>, CallError> {
        self.forks.tick(now);
        let forks = &mut self.forks;
        let not_recording = || {
            CallError::FailedPrecondition(format!("call {} is not being recorded", self.call_id))
        };
        let (change, status) = match req {
            RecordRequest::Status => {
                return Ok(match forks.recording.as_deref() {
                    Some(r) => Some(r.status(r.state())),
                    None => forks.last.as_deref().cloned(),
                });
            }
            RecordRequest::Start { open, link } => {
                if let Some(r) = forks.recording.as_deref() {
                    return Ok(Some(r.status(r.state())));
                }
                if self.ended.is_some() {
                    return Err(CallError::FailedPrecondition(format!(
                        "call {} has ended; it cannot be recorded",
                        self.call_id
                    )));
                }
                let r = RecordingFork {
                    id: open.id,
                    files: open.files.clone(),
                    link,
                    started: now,
                    paused: false,
                    dropped: 0,
                    closed: false,
                };
                // This thread's ring toward the writer, allocated here (once per shard) rather
                // than at the first packet.
                let _ = r.link.prepare_thread();
                r.link.send(Ctrl::Open(open));
                let status = r.status(RecordingState::Recording);
                forks.recording = Some(Box::new(r));
                (RecordingChange::Started, status)
            }
            RecordRequest::Stop => match forks.stop(now, "stopped by request") {
                Some(status) => (RecordingChange::Stopped, status),
                None => return Ok(forks.last.as_deref().cloned()),
            },
            RecordRequest::Pause | RecordRequest::Resume => {
                let pause = matches!(req, RecordRequest::Pause);
                let r = forks.recording.as_deref_mut().ok_or_else(not_recording)?;
                if r.paused == pause {
                    return Ok(Some(r.status(r.state())));
                }
                r.paused = pause;
                let (note, change) = if pause {
                    (Note::Paused, RecordingChange::Paused)
                } else {
                    (Note::Resumed, RecordingChange::Resumed)
                };
                r.link.send(Ctrl::Note {
                    id: r.id,
                    clock: clock_at(now, r.started),
                    note,
                });
                (change, r.status(r.state()))
            }
        };
        self.events.push_back(CallEventKind::Recording {
            change,
            status: status.clone(),
        });
        Ok(Some(status))
    }

    /// Start or stop a supervisor's live listen-in, or read its state (idempotent; see
    /// [`crate::api::ListenOp`]). `out` carries the DTLS close_notify of a stopped session.
    pub fn listen(
        &mut self,
        req: ListenRequest,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Result<Option<ListenStatus>, CallError> {
        self.forks.tick(now);
        let result = match req {
            ListenRequest::Status => Ok(self.listen_status()),
            ListenRequest::Stop => {
                if let Some(l) = self.forks.listen.as_deref_mut() {
                    l.stop(STOPPED_BY_REQUEST, out);
                }
                self.report_listen();
                Ok(self.listen_status())
            }
            ListenRequest::Start {
                offer_sdp,
                mode,
                socket,
                local,
                advertised,
            } => {
                if let Some(l) = self.forks.listen.as_deref()
                    && l.offer() == offer_sdp
                {
                    return Ok(Some(l.status()));
                }
                if self.ended.is_some() {
                    return Err(CallError::FailedPrecondition(format!(
                        "call {} has ended; it cannot be listened to",
                        self.call_id
                    )));
                }
                let session = ListenSession::new(
                    &offer_sdp,
                    ListenParams {
                        socket,
                        local,
                        advertised,
                        identity: self.identity.clone(),
                        cfg: &self.cfg,
                        mode,
                    },
                    now,
                )
                .map_err(|e| CallError::InvalidArgument(format!("the supervisor's offer: {e}")))?;
                // The supervisor reloaded: the old session gives way to the new offer.
                if let Some(old) = self.forks.listen.as_deref_mut() {
                    old.stop("replaced by a new offer", out);
                    self.report_listen();
                }
                let status = session.status();
                self.forks.listen = Some(Box::new(session));
                self.events.push_back(CallEventKind::Listen {
                    change: ListenChange::Started,
                    status: Box::new(status.clone()),
                });
                // A media server's session is live at once: Connected follows Started.
                self.report_listen();
                Ok(Some(status))
            }
        };
        if self.ended.is_none() {
            let (gate, rest) = (self.gate_deadline(), self.rest_deadline());
            self.deadlines.set(gate, rest);
        }
        result
    }

    /// The listen-in's socket while one runs.
    pub fn listen_socket(&self) -> Option<SocketRef> {
        self.forks.listen_socket()
    }

    /// Report the listen-in's changes; a stopped one gives its socket back to the engine.
    pub(super) fn report_listen(&mut self) {
        if let Some(socket) = self.forks.report(&mut self.events) {
            self.release_socket(socket);
        }
    }

    fn listen_status(&self) -> Option<ListenStatus> {
        match self.forks.listen.as_deref() {
            Some(l) => Some(l.status()),
            None => self.forks.listen_last.as_deref().cloned(),
        }
    }

    /// The call ends: a running recording and listen-in stop first (their events before
    /// `Ended`). The listen-in's close_notify cannot go out here (no outbox): the browser sees
    /// its consent checks go unanswered once the call's sockets close.
    pub(super) fn end_forks(&mut self, cause: EndCause) {
        if let Some(l) = self.forks.listen.as_deref_mut() {
            l.stop(cause.as_str(), &mut crate::listen::Discard);
            self.report_listen();
        }
        let Some(r) = self.forks.recording.as_deref() else {
            return;
        };
        let now = self.forks.now();
        r.link.send(Ctrl::Note {
            id: r.id,
            clock: clock_at(now, r.started),
            note: Note::Stopped {
                reason: cause.as_str().to_string(),
            },
        });
        if let Some(status) = self.forks.stop(now, cause.as_str()) {
            self.events.push_back(CallEventKind::Recording {
                change: RecordingChange::Stopped,
                status,
            });
        }
    }
}
