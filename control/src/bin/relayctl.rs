//! `relayctl`: operate a relay from a shell. Lists, shows, terminates and watches calls, shows
//! load and drains; runtime controls as rtpengine-ctl has them: log level, admission limits,
//! per-call debug logging. Tables by default, `--json` for scripts (one JSON document per command; one
//! per line for `watch`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use control::client::{RecordingOp, RelayClient, error_reason, meta_code};
use control::json;
use control::pb;
use control::table::{Table, parse_duration, short_duration};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Parser, Debug)]
#[command(
    name = "relayctl",
    version,
    about = "Operate a WhatsApp media relay over its gRPC control API"
)]
struct Cli {
    /// The relay's control endpoint (https:// for TLS).
    #[arg(
        long,
        env = "RELAYCTL_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    addr: String,
    /// Bearer token, if the relay requires one (RELAYCTL_TOKEN still works, deprecated).
    #[arg(
        long,
        env = control::TOKEN_ENV,
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// CA certificate (PEM) that signed the relay's certificate.
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --tls-key.
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List live calls.
    List {
        /// Only calls of this business phone number ID.
        #[arg(long)]
        number: Option<String>,
        /// Only calls in this state (connecting, ready, active, ended); repeatable.
        #[arg(long = "state", value_parser = parse_state)]
        states: Vec<pb::CallState>,
    },
    /// Show one call: state, per-leg stats, event log.
    Show { call_id: String },
    /// End a call (safe to repeat; unknown calls succeed).
    Terminate {
        call_id: String,
        #[arg(long, default_value = "relayctl")]
        reason: String,
    },
    /// Stream call events (all calls, or one) until interrupted: one line per event, an ended
    /// call as its duration, cause, Meta code and loss (--json: every event as JSON).
    Watch {
        call_id: Option<String>,
        /// Only ended calls (one line each).
        #[arg(long)]
        ended: bool,
    },
    /// Record a call to Ogg Opus files on the relay: start, stop, pause (PCI), resume.
    Record {
        #[arg(value_enum)]
        action: RecordAction,
        call_id: String,
    },
    /// A live listen-in: `start` takes the listener's SDP offer (two recvonly audio m-lines:
    /// consumer, agent; a browser's WebRTC offer or a media server's RTP/AVP or RTP/SAVP one)
    /// from a file or `-` (stdin), or `--rtp CONSUMER AGENT` (plain RTP to two addresses), and
    /// prints the relay's answer; `stop` ends it.
    Listen {
        #[arg(value_enum)]
        action: ListenAction,
        call_id: String,
        /// With `start`: the listener's SDP offer, a file or `-` for stdin.
        #[arg(long, conflicts_with = "rtp")]
        offer: Option<String>,
        /// With `start`: send the consumer's audio to CONSUMER and the agent's to AGENT
        /// (ip:port each) as plain RTP (Opus, payload type 96): relayctl writes the offer.
        #[arg(long, num_args = 2, value_names = ["CONSUMER", "AGENT"])]
        rtp: Vec<std::net::SocketAddr>,
    },
    /// Active calls, capacity and per-shard packet rates.
    Load,
    /// Show or set the relay's log filter (RUST_LOG syntax: debug, info,relay=debug).
    LogLevel {
        /// New filter; without it, print the one in force.
        filter: Option<String>,
    },
    /// Show or change the admission limits at run time (until the next restart).
    Limits {
        /// Calls admitted in total.
        #[arg(long)]
        capacity: Option<u32>,
        /// Refuse new calls while every shard is at least this busy (1-100; 100 = never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        busy_percent: Option<u32>,
    },
    /// Turn debug logging of one call on (or off with --off): all its events with details and a
    /// statistics line every call-log sample, at INFO; cleared when the call ends.
    Debug {
        call_id: String,
        #[arg(long)]
        off: bool,
    },
    /// Stop admitting calls; end the remaining ones after the deadline.
    Drain {
        /// e.g. 60s, 5m; default: the relay's configured deadline.
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ListenAction {
    Start,
    Stop,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RecordAction {
    Start,
    Stop,
    Pause,
    Resume,
}

fn parse_state(s: &str) -> Result<pb::CallState, String> {
    let upper = format!("CALL_STATE_{}", s.to_ascii_uppercase());
    match pb::CallState::from_str_name(&upper) {
        Some(st) if st != pb::CallState::Unspecified => Ok(st),
        _ => Err(format!(
            "unknown state {s:?} (connecting, ready, active, ended)"
        )),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.token = control::token_or_deprecated(cli.token.take(), "RELAYCTL_TOKEN");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn run(cli: Cli) -> Result<(), Error> {
    let tls = tls_config(&cli)?;
    let mut relay = RelayClient::connect_tls(cli.addr.clone(), cli.token.clone(), tls).await?;
    let out = match cli.command {
        Command::List { number, states } => {
            let calls = relay
                .list_calls(number.unwrap_or_default(), &states)
                .await
                .map_err(status_error)?;
            if cli.json {
                json_line(&serde_json::Value::Array(
                    calls.iter().map(json::call_info).collect(),
                ))
            } else {
                list_table(&calls)
            }
        }
        Command::Show { call_id } => {
            let resp = relay.get_call(call_id).await.map_err(status_error)?;
            if cli.json {
                json_line(&json::get_call(&resp))
            } else {
                show(&resp)
            }
        }
        Command::Terminate { call_id, reason } => {
            let last = relay
                .terminate(call_id.clone(), reason)
                .await
                .map_err(status_error)?;
            match (cli.json, last) {
                (true, last) => json_line(&serde_json::json!({
                    "call": last.as_ref().map(json::call_info)
                })),
                (false, Some(info)) => {
                    let mut s = format!("terminated {call_id}\n");
                    s.push_str(&call_summary(&info));
                    s
                }
                (false, None) => format!("{call_id}: unknown or already ended; nothing to do\n"),
            }
        }
        Command::Record { action, call_id } => {
            let op = match action {
                RecordAction::Start => RecordingOp::Start,
                RecordAction::Stop => RecordingOp::Stop,
                RecordAction::Pause => RecordingOp::Pause,
                RecordAction::Resume => RecordingOp::Resume,
            };
            let rec = relay
                .recording(call_id.clone(), op)
                .await
                .map_err(status_error)?;
            match (cli.json, rec) {
                (true, rec) => json_line(&serde_json::json!({
                    "recording": rec.as_ref().map(json::recording)
                })),
                (false, None) => format!("{call_id}: not recorded; nothing to do\n"),
                (false, Some(r)) => {
                    let v = json::recording(&r);
                    let state = v["state"].as_str().unwrap_or("unknown");
                    format!(
                        "{call_id}: {state}\n  consumer  {}\n  agent     {}\n  events    {}\n  dropped   {} packet(s)\n",
                        r.consumer_file, r.agent_file, r.events_file, r.dropped_packets
                    )
                }
            }
        }
        Command::Listen {
            action,
            call_id,
            offer,
            rtp,
        } => {
            let listen = match action {
                ListenAction::Start => {
                    let offer = match (offer.as_deref(), &rtp[..]) {
                        (Some(path), _) => read_offer(path)?,
                        (None, [consumer, agent]) => plain_rtp_offer(*consumer, *agent),
                        (None, _) => {
                            return Err("listen start needs --offer FILE (or -) or --rtp \
                                        CONSUMER AGENT"
                                .into());
                        }
                    };
                    Some(
                        relay
                            .start_listen(call_id.clone(), offer)
                            .await
                            .map_err(status_error)?,
                    )
                }
                ListenAction::Stop => relay
                    .stop_listen(call_id.clone())
                    .await
                    .map_err(status_error)?,
            };
            match (cli.json, listen) {
                (true, l) => json_line(&serde_json::json!({
                    "listen": l.as_ref().map(|l| {
                        let mut v = json::listen(l);
                        v["answer_sdp"] = serde_json::Value::String(l.answer_sdp.clone());
                        v
                    })
                })),
                (false, None) => format!(
                    "{call_id}: not listened to; nothing to do
"
                ),
                (false, Some(l)) => {
                    let v = json::listen(&l);
                    let mut s = format!(
                        "{call_id}: listen-in {}
  local       {}
  supervisor  {}
  consumer    {} packet(s)
  agent       {} packet(s)
  dropped     {} packet(s)
",
                        v["state"].as_str().unwrap_or("unknown"),
                        l.local,
                        non_empty(&l.supervisor),
                        l.consumer_packets,
                        l.agent_packets,
                        l.dropped_packets
                    );
                    if !l.stop_reason.is_empty() {
                        s.push_str(&format!(
                            "  stopped     {}
",
                            l.stop_reason
                        ));
                    }
                    if matches!(action, ListenAction::Start) {
                        s.push_str(
                            "answer (give it to the supervisor's setRemoteDescription):
",
                        );
                        s.push_str(&l.answer_sdp);
                    }
                    s
                }
            }
        }
        Command::Watch { call_id, ended } => {
            return watch(&mut relay, call_id, cli.json, ended).await;
        }
        Command::Load => {
            let load = relay.load().await.map_err(status_error)?;
            if cli.json {
                json_line(&json::load(&load))
            } else {
                load_table(&load)
            }
        }
        Command::LogLevel { filter } => {
            let now = relay.set_log_level(filter).await.map_err(status_error)?;
            if cli.json {
                json_line(&serde_json::json!({ "filter": now }))
            } else {
                format!("log filter: {now}\n")
            }
        }
        Command::Limits {
            capacity,
            busy_percent,
        } => {
            let l = relay
                .set_limits(capacity, busy_percent)
                .await
                .map_err(status_error)?;
            if cli.json {
                json_line(&serde_json::json!({
                    "capacity": l.capacity,
                    "max_shard_busy_percent": l.max_shard_busy_percent,
                }))
            } else {
                format!(
                    "capacity {} calls; new calls refused while every shard is over {}% busy\n",
                    l.capacity, l.max_shard_busy_percent
                )
            }
        }
        Command::Debug { call_id, off } => {
            let on = relay
                .set_call_debug(call_id.clone(), !off)
                .await
                .map_err(status_error)?;
            if cli.json {
                json_line(&serde_json::json!({ "call_id": call_id, "debug": on }))
            } else {
                format!(
                    "{call_id}: debug logging {}\n",
                    if on { "on" } else { "off" }
                )
            }
        }
        Command::Drain { deadline } => {
            let resp = relay.drain(deadline).await.map_err(status_error)?;
            if cli.json {
                json_line(&json::drain(&resp))
            } else {
                format!(
                    "draining: new calls are refused; {} live call(s) will be ended at {}\n",
                    resp.active_calls,
                    resp.deadline
                        .as_ref()
                        .map_or("the relay's default deadline".into(), json::timestamp)
                )
            }
        }
    };
    write_out(&out)
}

/// Writes to stdout; a closed pipe (`relayctl watch | head`) ends the command quietly.
fn write_out(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Like [`write_out`], but tells the caller whether the reader is still there.
fn write_line(line: &str) -> Result<bool, Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn tls_config(cli: &Cli) -> Result<Option<ClientTlsConfig>, Error> {
    if cli.tls_ca.is_none() && cli.tls_cert.is_none() {
        // https:// endpoints without options use the system roots.
        return Ok(cli
            .addr
            .starts_with("https://")
            .then(|| ClientTlsConfig::new().with_enabled_roots()));
    }
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &cli.tls_ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    } else {
        tls = tls.with_enabled_roots();
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A failed RPC, with the Meta code and reason when the relay gave them.
fn status_error(s: tonic::Status) -> Error {
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    if let Some(reason) = error_reason(&s) {
        msg.push_str(&format!(" [{reason}]"));
    }
    if let Some(code) = meta_code(&s) {
        msg.push_str(&format!(" (Meta code {code})"));
    }
    msg.into()
}

/// A media server's offer for plain RTP to two addresses (`--rtp`): Opus on payload type 96,
/// RTCP muxed (the BYE at the end comes to the same ports).
fn plain_rtp_offer(consumer: std::net::SocketAddr, agent: std::net::SocketAddr) -> String {
    let family = |a: &std::net::SocketAddr| if a.is_ipv6() { "IP6" } else { "IP4" };
    let section = |a: &std::net::SocketAddr, label: u8| {
        format!(
            "m=audio {} RTP/AVP 96\r\nc=IN {} {}\r\na=label:{label}\r\na=recvonly\r\n\
             a=rtcp-mux\r\na=rtpmap:96 opus/48000/2\r\n",
            a.port(),
            family(a),
            a.ip()
        )
    };
    format!(
        "v=0\r\no=relayctl 1 1 IN {} {}\r\ns=listen\r\nt=0 0\r\n{}{}",
        family(&consumer),
        consumer.ip(),
        section(&consumer, 1),
        section(&agent, 2)
    )
}

/// The supervisor's offer from a file, or stdin for `-`.
fn read_offer(path: &str) -> Result<String, Error> {
    use std::io::Read as _;
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the offer from stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the offer {path}: {e}"))?;
    }
    Ok(text)
}

fn json_line(v: &serde_json::Value) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn age(c: &pb::CallInfo) -> String {
    control::table::call_age(c)
}

/// The calls as one table (shared with `loadtest call`, which shows its call the same way).
fn list_table(calls: &[pb::CallInfo]) -> String {
    control::table::calls_table(calls)
}

fn call_summary(c: &pb::CallInfo) -> String {
    let mut t = Table::new(["", ""]);
    t.row(["call", c.call_id.as_str()]);
    t.row(["business number", c.business_number.as_str()]);
    t.row(["consumer", c.consumer.as_str()]);
    t.row(["direction", &opt(json::direction(c.direction()))]);
    t.row(["state", &opt(json::state(c.state()))]);
    t.row(["gate", if c.gate_open { "open" } else { "closed" }]);
    t.row(["srtp", &opt(json::srtp_profile(c.srtp_profile()))]);
    t.row(["whatsapp remote", &non_empty(&c.whatsapp_remote)]);
    t.row(["internal remote", &non_empty(&c.internal_remote)]);
    t.row([
        "created",
        &c.created_at.as_ref().map_or("-".into(), json::timestamp),
    ]);
    t.row(["age", &age(c)]);
    if let Some(cause) = json::end_cause(c.end_cause()) {
        let meta = c
            .meta_code
            .map_or(String::new(), |m| format!(" (Meta {m})"));
        t.row(["ended", &format!("{cause}{meta}")]);
    }
    // Drop the empty header line.
    let rendered = t.render();
    let mut s: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();

    let mut legs = Table::new([
        "LEG",
        "DIR",
        "PACKETS",
        "BYTES",
        "LOST",
        "JITTER ms",
        "DROPPED",
        "AUTH FAIL",
        "RTT ms",
    ]);
    for (name, leg) in [("whatsapp", &c.whatsapp), ("internal", &c.internal)] {
        let Some(leg) = leg else { continue };
        for (dir, st) in [("rx", &leg.received), ("tx", &leg.sent)] {
            let st = st.unwrap_or_default();
            let rx = dir == "rx";
            legs.row([
                name.to_string(),
                dir.to_string(),
                st.packets.to_string(),
                st.bytes.to_string(),
                st.lost.to_string(),
                format!("{:.1}", st.jitter_ms),
                if rx {
                    leg.dropped.to_string()
                } else {
                    String::new()
                },
                if rx {
                    leg.auth_failures.to_string()
                } else {
                    String::new()
                },
                if rx {
                    leg.rtt_ms.map_or("-".into(), |r| format!("{r:.1}"))
                } else {
                    String::new()
                },
            ]);
        }
    }
    if !legs.is_empty() {
        s.push('\n');
        s.push_str(&legs.render());
    }
    s
}

fn non_empty(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn show(resp: &pb::GetCallResponse) -> String {
    let mut s = resp.call.as_ref().map(call_summary).unwrap_or_default();
    if !resp.events.is_empty() {
        s.push('\n');
        let mut t = Table::new(["TIME", "EVENT", "DETAIL"]);
        for e in &resp.events {
            let (kind, detail) = json::event_kind(e.kind.as_ref());
            t.row([
                e.at.as_ref().map_or("-".into(), json::timestamp),
                kind.to_string(),
                detail_text(&detail),
            ]);
        }
        s.push_str(&t.render());
    }
    s
}

/// `{"from":"whatsapp","digit":"5"}` → `from=whatsapp digit=5`.
fn detail_text(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as one line: `TIME  CALL  EVENT  details`. An ended call reads as what an operator
/// checks first: how long it lasted, why it ended (with Meta's code) and how lossy it was.
fn event_line(e: &pb::CallEvent) -> String {
    let at = e.at.as_ref().map_or("-".into(), json::timestamp);
    let detail = match &e.kind {
        Some(pb::call_event::Kind::Ended(end)) => ended_text(e, end),
        kind => detail_text(&json::event_kind(kind.as_ref()).1),
    };
    let (kind, _) = json::event_kind(e.kind.as_ref());
    format!("{at}  {}  {kind}  {detail}", e.call_id)
}

/// `duration=1m23s cause=media_receive_timeout meta=138021 loss wa rx 0.2% tx 0.0% int rx 0.0%
/// tx 0.1% rtt wa 38ms`
fn ended_text(e: &pb::CallEvent, end: &pb::Ended) -> String {
    let cause = json::end_cause(end.cause()).unwrap_or_else(|| "unspecified".into());
    let mut s = String::new();
    let stats = end.stats.as_ref();
    let duration = stats
        .and_then(|c| c.created_at)
        .zip(e.at)
        .and_then(|(from, to)| {
            let (from, to) = (
                SystemTime::try_from(from).ok()?,
                SystemTime::try_from(to).ok()?,
            );
            to.duration_since(from).ok()
        });
    s.push_str(&format!(
        "duration={} cause={cause}",
        duration.map_or("-".into(), |d| short_duration(d.as_secs()))
    ));
    if let Some(code) = end.meta_code {
        s.push_str(&format!(" meta={code}"));
    }
    let pct = |st: &Option<pb::StreamStats>, received: bool| {
        let st = st.unwrap_or_default();
        // Received: lost / (received + lost); sent: the peer's count of our packets lost.
        let expected = if received {
            st.packets + st.lost
        } else {
            st.packets
        };
        if expected == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", st.lost as f64 * 100.0 / expected as f64)
        }
    };
    for (name, leg) in [
        ("wa", stats.and_then(|c| c.whatsapp.as_ref())),
        ("int", stats.and_then(|c| c.internal.as_ref())),
    ] {
        if let Some(l) = leg {
            s.push_str(&format!(
                " loss_{name}=rx:{},tx:{}",
                pct(&l.received, true),
                pct(&l.sent, false)
            ));
        }
    }
    if let Some(rtt) = stats
        .and_then(|c| c.whatsapp.as_ref())
        .and_then(|l| l.rtt_ms)
    {
        s.push_str(&format!(" rtt_wa={rtt:.0}ms"));
    }
    s
}

fn load_table(l: &pb::GetLoadResponse) -> String {
    let mut s = format!(
        "active calls {} / capacity {}{}\n",
        l.active_calls,
        l.capacity,
        if l.draining { "  (DRAINING)" } else { "" }
    );
    if !l.io_driver.is_empty() {
        s.push_str(&format!("io driver {}\n", l.io_driver));
    }
    // BUSY is counted against the CPU each shard may use: a core, or its part of this limit.
    match l.cpu_limit_cores {
        Some(c) => s.push_str(&format!(
            "cpu limit {c:.2} cores (BUSY is of each shard's part of it)\n"
        )),
        None => s.push_str("cpu limit none\n"),
    }
    if !l.shards.is_empty() {
        let mut t = Table::new(["SHARD", "CALLS", "PACKETS/S", "BUSY"]);
        for sh in &l.shards {
            t.row([
                sh.shard.to_string(),
                sh.calls.to_string(),
                sh.packets_per_second.to_string(),
                format!("{:.0}%", sh.busy_ratio * 100.0),
            ]);
        }
        s.push('\n');
        s.push_str(&t.render());
    }
    s
}

async fn watch(
    relay: &mut RelayClient,
    call_id: Option<String>,
    as_json: bool,
    ended_only: bool,
) -> Result<(), Error> {
    let mut stream = relay.watch(call_id).await.map_err(status_error)?;
    while let Some(item) = stream.message().await.map_err(status_error)? {
        let is_end = matches!(
            &item.item,
            Some(pb::watch_response::Item::Event(pb::CallEvent {
                kind: Some(pb::call_event::Kind::Ended(_)),
                ..
            }))
        );
        if ended_only && !is_end {
            continue;
        }
        let line = if as_json {
            json::watch_item(&item).to_string()
        } else {
            match item.item {
                Some(pb::watch_response::Item::Event(e)) => event_line(&e),
                Some(pb::watch_response::Item::Lagged(l)) => {
                    format!("-- fell behind: {} event(s) skipped --", l.skipped)
                }
                None => continue,
            }
        };
        if !write_line(line.trim_end())? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_offer_is_one_the_relay_answers() {
        use relay::listen::sdp::{OfferedTransport, parse_offer};
        let (c, a) = (
            "192.0.2.10:40000".parse().unwrap(),
            "[2001:db8::1]:40002".parse().unwrap(),
        );
        let offer = parse_offer(&plain_rtp_offer(c, a)).expect("the relay takes it");
        assert_eq!(offer.transport, OfferedTransport::Rtp { sdes: false });
        assert_eq!(offer.tracks[0].target, Some(c));
        assert_eq!(offer.tracks[1].target, Some(a));
        assert!(
            offer
                .tracks
                .iter()
                .all(|t| t.rtcp_mux && t.opus_pt.get() == 96)
        );
    }

    #[test]
    fn list_table_shows_one_row_per_call() {
        let call = pb::CallInfo {
            call_id: "wacid.1".into(),
            business_number: "1555".into(),
            consumer: "4477".into(),
            direction: pb::CallDirection::UserInitiated.into(),
            state: pb::CallState::Active.into(),
            gate_open: true,
            srtp_profile: pb::SrtpProfile::AeadAes128Gcm.into(),
            whatsapp_remote: "157.240.1.1:3478".into(),
            whatsapp: Some(pb::LegStats {
                received: Some(pb::StreamStats {
                    packets: 50,
                    ..Default::default()
                }),
                sent: Some(pb::StreamStats {
                    packets: 49,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = list_table(&[call]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("CALL ID"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "wacid.1",
                "1555",
                "4477",
                "in",
                "active",
                "open",
                "AEAD_AES_128_GCM",
                "157.240.1.1:3478",
                "-",
                "50/49",
                "-"
            ]
        );
        assert_eq!(lines[2], "1 call(s)");
        assert_eq!(list_table(&[]), "no calls\n");
    }

    #[test]
    fn an_ended_call_is_one_short_line() {
        let t = |secs| prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        };
        let stream = |packets, lost| pb::StreamStats {
            packets,
            lost,
            ..Default::default()
        };
        let e = pb::CallEvent {
            call_id: "wacid.9".into(),
            at: Some(t(1_700_000_083)),
            kind: Some(pb::call_event::Kind::Ended(pb::Ended {
                cause: pb::EndCause::MediaReceiveTimeout.into(),
                meta_code: Some(138021),
                stats: Some(pb::CallInfo {
                    created_at: Some(t(1_700_000_000)),
                    whatsapp: Some(pb::LegStats {
                        received: Some(stream(998, 2)),
                        sent: Some(stream(1000, 0)),
                        rtt_ms: Some(38.4),
                        ..Default::default()
                    }),
                    internal: Some(pb::LegStats {
                        received: Some(stream(1000, 0)),
                        sent: Some(stream(0, 0)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            })),
        };
        let line = event_line(&e);
        assert!(line.len() < 200, "{line}");
        assert!(!line.contains('{'), "no JSON: {line}");
        assert!(
            line.ends_with(
                "wacid.9  ended  duration=1m23s cause=media_receive_timeout meta=138021 \
                 loss_wa=rx:0.2%,tx:0.0% loss_int=rx:0.0%,tx:- rtt_wa=38ms"
            ),
            "{line}"
        );
    }

    #[test]
    fn event_details_read_as_key_value_pairs() {
        let (kind, detail) = json::event_kind(Some(&pb::call_event::Kind::DtmfReceived(
            pb::DtmfReceived {
                from: pb::Leg::Whatsapp.into(),
                digit: "5".into(),
            },
        )));
        assert_eq!(kind, "dtmf_received");
        assert_eq!(detail_text(&detail), "digit=5 from=whatsapp");
    }
}
