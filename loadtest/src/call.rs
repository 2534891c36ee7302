//! `loadtest call`: one real call through a running relay, for a first look. The same peers as
//! a load test (a Meta-faithful WhatsApp peer: ICE-lite, DTLS-SRTP, Opus-like audio; a SIP peer:
//! plain RTP), driven through the same gRPC calls a signaling tier makes, then a plain-language
//! account: setup time and where it went, packets each way, the call as `relayctl list` shows
//! it, and the relay's event log for it.

use std::time::Duration;

use control::pb;

use crate::report::RunReport;
use crate::session::{Backend, Options, Session, SessionError, WaMode};
use crate::target::{self, TargetError};

/// What one call did.
#[derive(Debug)]
pub struct CallOutcome {
    pub endpoint: String,
    pub wa: WaMode,
    pub hold: Duration,
    pub run: RunReport,
    /// The call as the relay showed it halfway through.
    pub during: Option<pb::CallInfo>,
    /// The relay's event log for the call, after it ended.
    pub events: Vec<pb::CallEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// `127.0.0.1:7070` or `http://127.0.0.1:7070` → the URL the client wants.
pub fn endpoint(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Makes one call through the relay at `endpoint`, with audio both ways for `hold`.
pub async fn one_call(
    endpoint: &str,
    token: Option<String>,
    wa: WaMode,
    hold: Duration,
) -> Result<CallOutcome, CallError> {
    let client = target::connect(endpoint, token, Duration::from_secs(5), None).await?;
    let session = Session::new(
        Backend::Relay {
            client,
            pid: None,
            metrics: None,
        },
        Options {
            live: false,
            wa_mode: wa,
            settle: Duration::from_millis(300),
            ..Options::default()
        },
    )?;
    let (run, during, events) = session.call_once(hold).await;
    Ok(CallOutcome {
        endpoint: endpoint.to_string(),
        wa,
        hold,
        run,
        during: during.and_then(|r| r.call),
        events,
    })
}

impl CallOutcome {
    /// Came up, and every stamped packet arrived both ways.
    pub fn ok(&self) -> bool {
        let r = &self.run;
        r.calls_ok == 1
            && r.failures_total() == 0
            && r.up.received > 0
            && r.down.received > 0
            && r.up.lost == 0
            && r.down.lost == 0
    }

    pub fn render(&self) -> String {
        let r = &self.run;
        let mut o = String::new();
        let wa = match self.wa {
            WaMode::Dtls => "ICE-lite + DTLS-SRTP, as Meta",
            WaMode::Sdes => "SDES-SRTP",
            WaMode::Plain => "plain RTP",
        };
        o.push_str(&format!(
            "One call through the relay at {}: a WhatsApp peer ({wa}) and a SIP peer (plain RTP), {:.0} s of audio each way.\n",
            self.endpoint,
            self.hold.as_secs_f64()
        ));
        for (stage, (n, example)) in &r.failures {
            o.push_str(&format!("FAILED at {stage} ({n}): {example}\n"));
        }
        if r.calls_ok == 1 {
            let st = &r.setup_stages;
            o.push_str(&format!(
                "setup: {:.1} ms from CreateCall to audio both ways (CreateCall {:.1} ms, ICE + DTLS {:.1} ms, OpenGate {:.1} ms)\n",
                r.setup.max_ms,
                st.create_rpc.max_ms,
                st.ice_dtls.max_ms,
                st.open_gate_rpc.max_ms
            ));
        }
        for (name, d) in [
            ("WhatsApp -> internal", &r.up),
            ("internal -> WhatsApp", &r.down),
        ] {
            o.push_str(&format!(
                "{name}: {} packets sent, {} received, {} lost; one-way latency p50 {:.2} ms, max {:.2} ms\n",
                d.sent, d.received, d.lost, d.latency.p50_ms, d.latency.max_ms
            ));
        }
        if r.generator.fill_received > 0 {
            o.push_str(&format!(
                "the relay also sent {} packets of Opus silence toward WhatsApp (before the first internal audio, and after it stopped)\n",
                r.generator.fill_received
            ));
        }
        match &self.during {
            Some(c) => {
                o.push_str("the call halfway through, as `relayctl list` shows it:\n");
                for line in control::table::calls_table(std::slice::from_ref(c)).lines() {
                    o.push_str("  ");
                    o.push_str(line);
                    o.push('\n');
                }
            }
            None => o.push_str("the relay did not show the call (GetCall failed)\n"),
        }
        if !self.events.is_empty() {
            o.push_str("its events at the relay:\n");
            let first = self.events.first().and_then(|e| e.at);
            for e in &self.events {
                let (kind, detail) = control::json::event_kind(e.kind.as_ref());
                let at = match (first, e.at) {
                    (Some(a), Some(b)) => format!(
                        "+{:>7.1} ms",
                        ((b.seconds - a.seconds) as f64 * 1e3) + f64::from(b.nanos - a.nanos) / 1e6
                    ),
                    _ => String::new(),
                };
                let detail = detail
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(k, v)| *k != "stats" && !v.is_null())
                            .map(|(k, v)| {
                                format!("{k}={}", v.as_str().map_or(v.to_string(), String::from))
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                o.push_str(format!("  {at}  {kind} {detail}").trim_end());
                o.push('\n');
            }
        }
        if let Some(c) = &r.relay {
            o.push_str(&format!(
                "ended with Terminate; the relay counted WhatsApp rx {} tx {}, internal rx {} tx {}, dropped {}\n",
                c.whatsapp_received, c.whatsapp_sent, c.internal_received, c.internal_sent, c.dropped
            ));
        }
        o.push_str(if self.ok() {
            "OK: the call came up and every packet arrived both ways.\n"
        } else {
            "NOT OK: see above.\n"
        });
        o
    }
}
