//! Process configuration: one TOML file, `RELAY_*` environment variables and flags, with
//! matching names, validated before anything starts.
//!
//! # Names
//!
//! Every setting has one key. Top-level keys are flat (`control_listen`, `drain_deadline`); the
//! call timers and limits ([`CallConfig`]) sit in a `[call]` table. From a key:
//!
//! | key | flag | environment variable |
//! |---|---|---|
//! | `control_listen` | `--control-listen` | `RELAY_CONTROL_LISTEN` |
//! | `call.media_timeout` | `--call-media-timeout` | `RELAY_CALL_MEDIA_TIMEOUT` |
//!
//! (`.` and `_` become `-` in flags; `.` becomes `_` and letters are upper-cased in variables.)
//! [`KEYS`] lists them all; `relay --print-config` prints every key with its effective value.
//!
//! # Precedence
//!
//! flag > environment variable > file (`--config PATH` / `RELAY_CONFIG`) > default. Each value
//! is parsed where it is read, so an error names the key, where the value came from and what
//! is wrong with it; the binary exits with code 2.
//!
//! Durations use humantime syntax (`300ms`, `10s`, `5m`); booleans `true`/`false` (also
//! `1`/`0`, `yes`/`no`, `on`/`off`); a boolean flag alone (`--log-json`) means `true`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::call::{Advertised, CallConfig};
use crate::control::{ControlConfig, TlsFiles};
use crate::engine::ratelimit::RateLimitConfig;
use crate::engine::{EngineConfig, IoDriverChoice, PortRange, TombstoneConfig};

/// Longest duration any setting accepts. Deadlines are added to `Instant`s, which panics on
/// overflow; a day is beyond any sensible timer and matches the control plane's drain cap.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The effective configuration of a `relay` process.
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub control_listen: SocketAddr,
    pub control_token: Option<String>,
    pub allow_unauthenticated: bool,
    pub control_tls_cert: Option<PathBuf>,
    pub control_tls_key: Option<PathBuf>,
    pub control_tls_client_ca: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
    pub drain_deadline: Duration,
    pub shards: usize,
    pub io_driver: IoDriverChoice,
    pub connect_twins: bool,
    /// `None`: that family is disabled toward WhatsApp.
    pub whatsapp_v4: Option<IpAddr>,
    pub whatsapp_v6: Option<IpAddr>,
    pub internal: IpAddr,
    pub advertise_v4: Option<IpAddr>,
    pub advertise_v6: Option<IpAddr>,
    pub advertise_internal: Option<IpAddr>,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub max_calls_per_number: u32,
    pub capacity: u32,
    /// See [`EngineConfig::transcode_weight`].
    pub transcode_weight: u32,
    /// Percent; see [`EngineConfig::max_shard_busy`].
    pub max_shard_busy_percent: u32,
    /// Per source IP: datagrams from addresses no call knows, at once and per second.
    pub rate_limit_burst: u32,
    pub rate_limit_per_second: u32,
    /// Per shard, all unknown sources together: datagrams at once and per second.
    pub rate_limit_shard_burst: u32,
    pub rate_limit_shard_per_second: u32,
    /// How long, and how many, ended call IDs refuse a new CreateCall (see
    /// [`TombstoneConfig`]).
    pub tombstone_lifetime: Duration,
    pub max_tombstones: usize,
    /// `/healthz` fails when a shard has not turned its loop for this long.
    pub shard_stall_timeout: Duration,
    pub log_json: bool,
    pub call_log_dir: Option<PathBuf>,
    pub call_log_poll_interval: Duration,
    /// HEP3 collector (Homer) for per-call RTCP and quality reports.
    pub homer: Option<SocketAddr>,
    pub homer_id: u32,
    /// `recording_dir`, `recording_name_template`, `recording_queue_packets`.
    pub recording: crate::record::RecordingConfig,
    /// `bot_ca_file`, `bot_connect_timeout`: voice-bot legs.
    pub bot: crate::bot::BotConfig,
    pub call: CallConfig,
}

impl Default for Settings {
    fn default() -> Self {
        let lo4: IpAddr = [127, 0, 0, 1].into();
        Settings {
            control_listen: crate::control::DEFAULT_LISTEN,
            control_token: None,
            allow_unauthenticated: false,
            control_tls_cert: None,
            control_tls_key: None,
            control_tls_client_ca: None,
            metrics_listen: SocketAddr::new(lo4, 9090),
            drain_deadline: Duration::from_secs(300),
            shards: 0,
            io_driver: IoDriverChoice::Auto,
            connect_twins: true,
            whatsapp_v4: Some(lo4),
            whatsapp_v6: Some(std::net::Ipv6Addr::LOCALHOST.into()),
            internal: lo4,
            advertise_v4: None,
            advertise_v6: None,
            advertise_internal: None,
            port_min: None,
            port_max: None,
            max_calls_per_number: 1000,
            capacity: 10_000,
            transcode_weight: crate::engine::DEFAULT_TRANSCODE_WEIGHT,
            max_shard_busy_percent: 90,
            rate_limit_burst: RateLimitConfig::default().burst,
            rate_limit_per_second: RateLimitConfig::default().per_second,
            rate_limit_shard_burst: RateLimitConfig::default().shard_burst,
            rate_limit_shard_per_second: RateLimitConfig::default().shard_per_second,
            tombstone_lifetime: TombstoneConfig::default().lifetime,
            max_tombstones: TombstoneConfig::default().max,
            shard_stall_timeout: Duration::from_secs(10),
            log_json: false,
            call_log_dir: None,
            call_log_poll_interval: Duration::from_secs(2),
            homer: None,
            homer_id: 0,
            recording: Default::default(),
            bot: Default::default(),
            call: CallConfig::default(),
        }
    }
}

impl fmt::Debug for Settings {
    // Settings get logged; the token must not be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// What kind of value a key takes (parsing, flag syntax, the placeholder in `--help`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    SocketAddr,
    Ip,
    /// An IP address or `none`.
    IpOrNone,
    Duration,
    Bool,
    Integer,
    Text,
    Path,
}

/// One setting: its names, how its value is read and printed.
#[derive(Debug)]
pub struct Key {
    /// TOML key; `call.x` is `x` in the `[call]` table.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Parse a value and store it in its field.
    set: fn(&mut Settings, &str) -> Result<(), String>,
    /// The field's effective value as TOML; `None` when unset (or secret).
    get: fn(&Settings) -> Option<toml::Value>,
}

/// `"call.media_timeout" => call.media_timeout: Dur, "help";` becomes a [`Key`] whose flag
/// and environment variable are derived from the key at compile time, whose kind is the
/// codec's, and whose setter and getter read and write that field through the codec.
macro_rules! keys {
    ($( $key:literal => $($field:ident).+ : $codec:ident $( ( $($arg:expr),* ) )?, $help:expr; )*) => {
        &[$(
            Key {
                key: $key,
                flag: {
                    const N: usize = $key.len();
                    const B: [u8; N] = names::flag::<N>($key);
                    names::as_str(&B)
                },
                env: {
                    const N: usize = names::ENV_PREFIX.len() + $key.len();
                    const B: [u8; N] = names::env::<N>($key);
                    names::as_str(&B)
                },
                kind: <value::$codec as value::KindOf>::KIND,
                help: $help,
                set: |s, v| {
                    s.$($field).+ = value::Codec::parse(&value::$codec $( ( $($arg),* ) )?, v)?;
                    Ok(())
                },
                get: |s| value::Codec::show(&value::$codec $( ( $($arg),* ) )?, &s.$($field).+),
            },
        )*]
    };
}

/// A key's flag and environment variable, computed in `const` from the key: `.` and `_`
/// become `-` in flags; `.` becomes `_` and letters are upper-cased in variables.
mod names {
    pub const ENV_PREFIX: &str = "RELAY_";

    pub const fn flag<const N: usize>(key: &str) -> [u8; N] {
        let k = key.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = match k[i] {
                b'.' | b'_' => b'-',
                c => c,
            };
            i += 1;
        }
        out
    }

    pub const fn env<const N: usize>(key: &str) -> [u8; N] {
        let p = ENV_PREFIX.as_bytes();
        let k = key.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = if i < p.len() {
                p[i]
            } else {
                match k[i - p.len()] {
                    b'.' => b'_',
                    c => c.to_ascii_uppercase(),
                }
            };
            i += 1;
        }
        out
    }

    pub const fn as_str(b: &'static [u8]) -> &'static str {
        match std::str::from_utf8(b) {
            Ok(s) => s,
            Err(_) => panic!("configuration keys are ASCII"),
        }
    }
}

/// How each kind of value is read from text (flags, variables and TOML scalars share one
/// parser) and printed back as TOML.
mod value {
    use super::*;
    use toml::Value as V;

    pub trait KindOf {
        const KIND: Kind;
    }

    pub trait Codec<T> {
        fn parse(&self, v: &str) -> Result<T, String>;
        fn show(&self, v: &T) -> Option<V>;
    }

    fn text(v: &dyn fmt::Display) -> Option<V> {
        Some(V::String(v.to_string()))
    }

    pub struct Addr;
    pub struct Ip;
    pub struct IpOrNone;
    pub struct Dur;
    pub struct Bool;
    /// A whole number within bounds (inclusive).
    pub struct Int(pub u64, pub u64);
    pub struct Text;
    /// Text never printed (`--print-config` output ends up in tickets and chat).
    pub struct Secret;
    pub struct Path;

    impl KindOf for Addr {
        const KIND: Kind = Kind::SocketAddr;
    }
    impl KindOf for Ip {
        const KIND: Kind = Kind::Ip;
    }
    impl KindOf for IpOrNone {
        const KIND: Kind = Kind::IpOrNone;
    }
    impl KindOf for Dur {
        const KIND: Kind = Kind::Duration;
    }
    impl KindOf for Bool {
        const KIND: Kind = Kind::Bool;
    }
    impl KindOf for Int {
        const KIND: Kind = Kind::Integer;
    }
    impl KindOf for Text {
        const KIND: Kind = Kind::Text;
    }
    impl KindOf for Secret {
        const KIND: Kind = Kind::Text;
    }
    impl KindOf for Path {
        const KIND: Kind = Kind::Path;
    }

    impl Codec<SocketAddr> for Addr {
        fn parse(&self, v: &str) -> Result<SocketAddr, String> {
            socket_addr(v)
        }
        fn show(&self, v: &SocketAddr) -> Option<V> {
            text(v)
        }
    }
    impl Codec<Option<SocketAddr>> for Addr {
        fn parse(&self, v: &str) -> Result<Option<SocketAddr>, String> {
            socket_addr(v).map(Some)
        }
        fn show(&self, v: &Option<SocketAddr>) -> Option<V> {
            v.as_ref().and_then(|a| text(a))
        }
    }
    impl Codec<IpAddr> for Ip {
        fn parse(&self, v: &str) -> Result<IpAddr, String> {
            ip(v)
        }
        fn show(&self, v: &IpAddr) -> Option<V> {
            text(v)
        }
    }
    impl Codec<Option<IpAddr>> for Ip {
        fn parse(&self, v: &str) -> Result<Option<IpAddr>, String> {
            ip(v).map(Some)
        }
        fn show(&self, v: &Option<IpAddr>) -> Option<V> {
            v.as_ref().and_then(|a| text(a))
        }
    }
    impl Codec<Option<IpAddr>> for IpOrNone {
        fn parse(&self, v: &str) -> Result<Option<IpAddr>, String> {
            ip_or_none(v)
        }
        fn show(&self, v: &Option<IpAddr>) -> Option<V> {
            match v {
                Some(ip) => text(ip),
                None => text(&"none"),
            }
        }
    }
    impl Codec<Duration> for Dur {
        fn parse(&self, v: &str) -> Result<Duration, String> {
            duration(v)
        }
        fn show(&self, v: &Duration) -> Option<V> {
            text(&humantime::format_duration(*v))
        }
    }
    impl Codec<bool> for Bool {
        fn parse(&self, v: &str) -> Result<bool, String> {
            boolean(v)
        }
        fn show(&self, v: &bool) -> Option<V> {
            Some(V::Boolean(*v))
        }
    }
    impl Int {
        fn read<T: TryFrom<u64>>(&self, v: &str) -> Result<T, String> {
            let n = integer(v, self.0, self.1)?;
            T::try_from(n).map_err(|_| format!("`{n}` is out of range"))
        }
    }
    fn int(n: u64) -> Option<V> {
        Some(V::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
    }
    impl Codec<u32> for Int {
        fn parse(&self, v: &str) -> Result<u32, String> {
            self.read(v)
        }
        fn show(&self, v: &u32) -> Option<V> {
            int(u64::from(*v))
        }
    }
    impl Codec<usize> for Int {
        fn parse(&self, v: &str) -> Result<usize, String> {
            self.read(v)
        }
        fn show(&self, v: &usize) -> Option<V> {
            int(*v as u64)
        }
    }
    impl Codec<Option<u16>> for Int {
        fn parse(&self, v: &str) -> Result<Option<u16>, String> {
            self.read(v).map(Some)
        }
        fn show(&self, v: &Option<u16>) -> Option<V> {
            v.and_then(|p| int(p.into()))
        }
    }
    impl Codec<String> for Text {
        fn parse(&self, v: &str) -> Result<String, String> {
            Ok(non_empty(v)?.to_string())
        }
        fn show(&self, v: &String) -> Option<V> {
            text(v)
        }
    }
    impl Codec<IoDriverChoice> for Text {
        fn parse(&self, v: &str) -> Result<IoDriverChoice, String> {
            v.parse()
        }
        fn show(&self, v: &IoDriverChoice) -> Option<V> {
            text(v)
        }
    }
    impl Codec<Option<String>> for Secret {
        fn parse(&self, v: &str) -> Result<Option<String>, String> {
            Ok(Some(non_empty(v)?.to_string()))
        }
        fn show(&self, _: &Option<String>) -> Option<V> {
            None
        }
    }
    impl Codec<Option<PathBuf>> for Path {
        fn parse(&self, v: &str) -> Result<Option<PathBuf>, String> {
            path(v).map(Some)
        }
        fn show(&self, v: &Option<PathBuf>) -> Option<V> {
            v.as_ref().map(|p| V::String(p.display().to_string()))
        }
    }
}

/// Every setting, in `--print-config` order, each declared once: its key (the flag and the
/// environment variable follow from it), the [`Settings`] field it sets, how its value is read
/// and printed, and its help. A test checks the `call.` keys are exactly [`CallConfig`]'s fields.
pub const KEYS: &[Key] = keys! {
    "control_listen" => control_listen: Addr,
        "gRPC control plane listen address";
    "control_token" => control_token: Secret,
        "bearer token every control request must carry (required off loopback)";
    "allow_unauthenticated" => allow_unauthenticated: Bool,
        "serve the control API off loopback without a token or mTLS (not recommended)";
    "control_tls_cert" => control_tls_cert: Path,
        "PEM certificate chain: serve the control API over TLS";
    "control_tls_key" => control_tls_key: Path,
        "PEM private key of control_tls_cert";
    "control_tls_client_ca" => control_tls_client_ca: Path,
        "PEM CA that control clients' certificates must chain to (mTLS)";
    "metrics_listen" => metrics_listen: Addr,
        "HTTP listen address for /metrics, /healthz and /readyz";
    "drain_deadline" => drain_deadline: Dur,
        "on SIGTERM, how long calls may continue before the rest are ended (cause drained)";
    "shards" => shards: Int(0, 1024),
        "engine shard threads; 0 = one per CPU";
    "io_driver" => io_driver: Text,
        "shard I/O: auto (io_uring, else epoll), io_uring (or fail to start), epoll (recvmmsg/sendmmsg)";
    "connect_twins" => connect_twins: Bool,
        "once a leg's peer is fixed, receive and send its media on a second socket connected to it (SO_REUSEPORT on media sockets; no route lookup per send)";
    "whatsapp_v4" => whatsapp_v4: IpOrNone,
        "WhatsApp-facing IPv4 bind address, or none";
    "whatsapp_v6" => whatsapp_v6: IpOrNone,
        "WhatsApp-facing IPv6 bind address, or none";
    "internal" => internal: Ip,
        "internal-leg bind address (toward the SIP media server)";
    "advertise_v4" => advertise_v4: Ip,
        "public IPv4 written into SDP toward WhatsApp (NAT, Kubernetes); unset: whatsapp_v4";
    "advertise_v6" => advertise_v6: Ip,
        "public IPv6 written into SDP toward WhatsApp; unset: whatsapp_v6";
    "advertise_internal" => advertise_internal: Ip,
        "address written into the internal leg's SDP; unset: internal";
    "port_min" => port_min: Int(1, u16::MAX as u64),
        "lowest UDP media port (with port_max); unset: ports chosen by the OS";
    "port_max" => port_max: Int(1, u16::MAX as u64),
        "highest UDP media port, inclusive";
    "max_calls_per_number" => max_calls_per_number: Int(1, u32::MAX as u64),
        "concurrent calls per business number (Meta's limit is 1000)";
    "capacity" => capacity: Int(1, u32::MAX as u64),
        "calls this relay admits in total; /readyz turns 503 at it";
    "transcode_weight" => transcode_weight: Int(1, 1000),
        "a transcoded call (voice bot) counts as this many calls toward capacity and shard choice";
    "max_shard_busy_percent" => max_shard_busy_percent: Int(1, 100),
        "refuse new calls (UNAVAILABLE, /readyz 503) while every shard worked at least this share of the last second; 100 = never";
    "rate_limit_burst" => rate_limit_burst: Int(1, u32::MAX as u64),
        "datagrams a source IP no call knows may send at once before it is dropped unread";
    "rate_limit_per_second" => rate_limit_per_second: Int(0, u32::MAX as u64),
        "... and per second after the burst (0: no refill)";
    "rate_limit_shard_burst" => rate_limit_shard_burst: Int(0, u32::MAX as u64),
        "per shard, datagrams all sources no call knows may send at once together (spoofed floods from many addresses); 0: no shard-wide cap";
    "rate_limit_shard_per_second" => rate_limit_shard_per_second: Int(0, u32::MAX as u64),
        "... and per second after that burst (0: no refill)";
    "tombstone_lifetime" => tombstone_lifetime: Dur,
        "an ended or terminated call ID refuses CreateCall (FAILED_PRECONDITION) and GetCall shows its end for this long; 0s: not remembered";
    "max_tombstones" => max_tombstones: Int(0, 10_000_000),
        "ended call IDs remembered at most (the oldest is forgotten first)";
    "shard_stall_timeout" => shard_stall_timeout: Dur,
        "/healthz fails when an engine shard has not turned its loop for this long";
    "log_json" => log_json: Bool,
        "log JSON lines instead of text";
    "call_log_dir" => call_log_dir: Path,
        "write one JSON record per ended call to DIR/calls-YYYY-MM-DD.jsonl (UTC)";
    "call_log_poll_interval" => call_log_poll_interval: Dur,
        "how often the call log samples live calls' statistics";
    "homer" => homer: Addr,
        "send per-call RTCP and quality reports over HEP3/UDP to this Homer collector (as rtpengine's --homer)";
    "homer_id" => homer_id: Int(0, u32::MAX as u64),
        "HEP capture agent ID the reports carry";
    "recording_dir" => recording.dir: Path,
        "write call recordings (StartRecording) under DIR; unset: recording is refused";
    "recording_name_template" => recording.name_template: Text,
        "a recording's file name under recording_dir, without extension ({call_id} {business} {consumer} {date} {time} {id}; / makes subdirectories)";
    "recording_queue_packets" => recording.queue_packets: Int(16, (1 << 20) as u64),
        "packets each shard may queue for the recording writer (a ring of 128 bytes a packet per recording shard, allocated at its first recording: 8192 = 1 MiB); beyond, packets are dropped (counted) rather than slow a call";
    "bot_ca_file" => bot.ca_file: Path,
        "PEM CA certificates trusted for voice bots' wss:// URLs besides the system's roots";
    "bot_connect_timeout" => bot.connect_timeout: Dur,
        "a voice bot's WebSocket (TCP, TLS, upgrade) must be open within this, or CreateCall/ReplaceInternalLeg fails with BOT_UNREACHABLE";
    "call.ice_connect_timeout" => call.ice_connect_timeout: Dur,
        "no working ICE pair within this ends the call (Meta 138020)";
    "call.ice_check_rto" => call.ice_check_rto: Dur,
        "first retransmission timeout of an ICE check";
    "call.consent_interval" => call.consent_interval: Dur,
        "RFC 7675 consent check interval";
    "call.consent_timeout" => call.consent_timeout: Dur,
        "RFC 7675 consent lost after this long without a response";
    "call.dtls_flight_rto" => call.dtls_flight_rto: Dur,
        "first DTLS flight retransmission timeout";
    "call.dtls_timeout" => call.dtls_timeout: Dur,
        "DTLS handshake not done within this ends the call (Meta 138019)";
    "call.start_media_timeout" => call.start_media_timeout: Dur,
        "gate open and no media from WhatsApp within this ends the call (Meta 138023)";
    "call.media_timeout" => call.media_timeout: Dur,
        "media from WhatsApp stopped this long ends the call (Meta 138021)";
    "call.rtcp_interval" => call.rtcp_interval: Dur,
        "RTCP report interval per leg";
    "call.ptime" => call.ptime: Dur,
        "packet time of generated audio (silence fill)";
    "call.silence_fill" => call.silence_fill: Bool,
        "send Opus silence to WhatsApp while the internal leg is quiet";
    "call.fill_after" => call.fill_after: Dur,
        "the internal leg counts as quiet after this long without a packet";
    "call.prebuffer_packets" => call.prebuffer_packets: Int(0, 3000),
        "internal packets held until the WhatsApp leg can carry them (20 ms each)";
    "call.internal_silence_timeout" => call.internal_silence_timeout: Dur,
        "the internal leg silent this long raises an internal_leg_silent event";
    "call.keep_dtls_state" => call.keep_dtls_state: Bool,
        "keep the WhatsApp leg's DTLS state after the handshake (reads Meta's close_notify; ~10 KiB a call)";
    "call.offer_g711" => call.offer_g711: Bool,
        "offer PCMU/PCMA after Opus to internal peers (the relay transcodes if they pick G.711)";
    "call.end_on_internal_silence" => call.end_on_internal_silence: Bool,
        "... and ends the call (cause internal_leg_timeout)";
    "call.one_way_timeout" => call.one_way_timeout: Dur,
        "media from one leg only for this long raises a one_way_audio event";
    "call.fill_after_max" => call.fill_after_max: Dur,
        "the fill wait adapts to the internal leg's jitter up to this (= fill_after: fixed)";
    "call.answer_timeout" => call.answer_timeout: Dur,
        "business-initiated: no Meta answer within this of create ends the call (answer_timeout)";
    "call.accept_timeout" => call.accept_timeout: Dur,
        "offer and answer known but no OpenGate within this ends the call (accept_timeout)";
    "call.max_call_duration" => call.max_call_duration: Dur,
        "a call ends at this age whatever it does (max_duration); 0 = no limit";
    "call.webrtc_idle_timeout" => call.webrtc_idle_timeout: Dur,
        "a browser leg with no consent check and no media for this long ends the call";
};

/// The file path (not itself a key: it says where the keys come from).
pub const CONFIG_FLAG: &str = "config";
pub const CONFIG_ENV: &str = "RELAY_CONFIG";

/// Where a value came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(fl) => write!(f, "flag --{fl}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A command-line syntax error, or `--help`/`--version` (print it; clap knows the exit code).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    #[error("{key} ({origin}): {problem}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        problem: String,
    },
    #[error("unknown key `{key}` in {path} (`relay --print-config` lists every key)")]
    UnknownKey { key: String, path: PathBuf },
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{what} ({origin}) is not valid UTF-8")]
    NotUtf8 { what: String, origin: Origin },
}

impl ConfigError {
    /// The key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::UnknownKey { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The result of reading the command line, environment and file.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// `--print-config` was given: print [`Settings::to_toml`] and exit.
    pub print_config: bool,
    pub config_file: Option<PathBuf>,
    origins: HashMap<&'static str, Origin>,
}

impl Loaded {
    /// Where the effective value of `key` came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }
}

/// The `relay` command line (flags only; environment variables are read by [`load`]).
pub fn command() -> Command {
    let mut cmd = Command::new("relay")
        .version(crate::ops::process::LONG_VERSION)
        .about("Media relay for WhatsApp Business Calling")
        .after_help(
            "Every option is also an environment variable (shown) and a TOML key (`relay \
             --print-config` prints them all). Precedence: flag > environment > file > default.",
        )
        .arg(
            Arg::new(CONFIG_FLAG)
                .long(CONFIG_FLAG)
                .value_name("PATH")
                .help(format!("TOML configuration file [env: {CONFIG_ENV}]")),
        )
        .arg(
            Arg::new("print-config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("print the effective configuration as TOML and exit"),
        );
    for k in KEYS {
        let mut arg = Arg::new(k.key)
            .long(k.flag)
            .value_name(placeholder(k.kind))
            .help(format!("{} [env: {}]", k.help, k.env));
        if k.kind == Kind::Bool {
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

fn placeholder(kind: Kind) -> &'static str {
    match kind {
        Kind::SocketAddr => "ADDR",
        Kind::Ip => "IP",
        Kind::IpOrNone => "IP|none",
        Kind::Duration => "DURATION",
        Kind::Bool => "BOOL",
        Kind::Integer => "N",
        Kind::Text => "TEXT",
        Kind::Path => "PATH",
    }
}

/// Read the process's own arguments and environment.
pub fn load_from_process() -> Result<Loaded, ConfigError> {
    load(std::env::args_os(), |name| std::env::var_os(name))
}

/// Build the effective configuration from `args` (with the program name first), the
/// environment (`env` returns a variable's value), and the file they name; then validate it.
pub fn load<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let mut loaded = Loaded {
        settings: Settings::default(),
        print_config: matches.get_flag("print-config"),
        config_file: None,
        origins: HashMap::new(),
    };

    let file = match matches.get_one::<String>(CONFIG_FLAG) {
        Some(p) => Some(PathBuf::from(p)),
        None => env_string(&env, CONFIG_ENV)?.map(PathBuf::from),
    };
    if let Some(path) = &file {
        apply_file(&mut loaded, path)?;
    }
    loaded.config_file = file;

    for k in KEYS {
        if let Some(v) = env_string(&env, k.env)? {
            apply(&mut loaded, k, &v, Origin::Env(k.env))?;
        }
    }
    apply_flags(&mut loaded, &matches)?;
    loaded.settings.validate(&loaded)?;
    Ok(loaded)
}

fn env_string(
    env: &impl Fn(&str) -> Option<OsString>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match env(name) {
        None => Ok(None),
        Some(v) => v.into_string().map(Some).map_err(|_| ConfigError::NotUtf8 {
            what: name.to_string(),
            origin: Origin::Env(name),
        }),
    }
}

fn apply_flags(loaded: &mut Loaded, matches: &ArgMatches) -> Result<(), ConfigError> {
    for k in KEYS {
        if let Some(v) = matches.get_one::<String>(k.key) {
            apply(loaded, k, v, Origin::Flag(k.flag))?;
        }
    }
    Ok(())
}

fn apply_file(loaded: &mut Loaded, path: &PathBuf) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    for (name, value) in &table {
        match (name.as_str(), value) {
            ("call", toml::Value::Table(call)) => {
                entries.extend(call.iter().map(|(n, v)| (format!("call.{n}"), v)));
            }
            _ => entries.push((name.clone(), value)),
        }
    }
    for (name, value) in entries {
        let Some(k) = KEYS.iter().find(|k| k.key == name) else {
            return Err(ConfigError::UnknownKey {
                key: name,
                path: path.clone(),
            });
        };
        let origin = Origin::File(path.clone());
        let text = toml_scalar(value).map_err(|problem| ConfigError::Invalid {
            key: k.key,
            origin: origin.clone(),
            problem,
        })?;
        apply(loaded, k, &text, origin)?;
    }
    Ok(())
}

/// A TOML scalar as the text a flag would carry, so all three sources share one parser.
fn toml_scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(_) => Err("expected a string, integer or boolean, found a float".into()),
        toml::Value::Datetime(_) => {
            Err("expected a string, integer or boolean, found a date".into())
        }
        toml::Value::Array(_) => Err("expected a single value, found an array".into()),
        toml::Value::Table(_) => Err("expected a single value, found a table".into()),
    }
}

fn apply(loaded: &mut Loaded, k: &'static Key, v: &str, origin: Origin) -> Result<(), ConfigError> {
    (k.set)(&mut loaded.settings, v).map_err(|problem| ConfigError::Invalid {
        key: k.key,
        origin: origin.clone(),
        problem,
    })?;
    loaded.origins.insert(k.key, origin);
    Ok(())
}

// ---- value parsers: each returns the problem, the caller adds the key and origin ----------

fn non_empty(v: &str) -> Result<&str, String> {
    if v.trim().is_empty() {
        Err("empty value; give one or leave the key unset".into())
    } else {
        Ok(v)
    }
}

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    non_empty(v)?.trim().parse().map_err(|_| {
        format!("`{v}` is not an address with a port (e.g. 127.0.0.1:7070 or [::1]:7070)")
    })
}

fn ip(v: &str) -> Result<IpAddr, String> {
    if v.trim().is_empty() {
        return Err(
            "empty value: an empty string is not an IP address; give one or leave \
                    the setting unset"
                .into(),
        );
    }
    let v = v.trim();
    v.parse()
        .map_err(|_| format!("`{v}` is not an IP address (e.g. 203.0.113.7 or 2001:db8::7)"))
}

fn ip_or_none(v: &str) -> Result<Option<IpAddr>, String> {
    if v.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    ip(v).map(Some).map_err(|e| format!("{e}, or `none`"))
}

fn duration(v: &str) -> Result<Duration, String> {
    let v = non_empty(v)?.trim();
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("`{v}` is not a duration (e.g. 300ms, 10s, 5m): {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("`{v}` is longer than the maximum of 24h"));
    }
    Ok(d)
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean (true or false)")),
    }
}

fn integer<T>(v: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let v = non_empty(v)?.trim();
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("`{v}` is not a whole number from {min} to {max}")),
    }
}

fn path(v: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(non_empty(v)?))
}

impl Settings {
    /// The configuration as a TOML file `--config` reads back to the same settings (except
    /// the control token, which is never printed).
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# relay configuration (effective values). Precedence: flag > environment > file > \
             default.\n# Each key is also a flag and an environment variable: `control_listen` \
             is --control-listen\n# and RELAY_CONTROL_LISTEN; `[call] media_timeout` is \
             --call-media-timeout and RELAY_CALL_MEDIA_TIMEOUT.\n",
        );
        let mut in_call = false;
        for k in KEYS {
            let name = match k.key.strip_prefix("call.") {
                Some(short) => {
                    if !in_call {
                        out.push_str("\n[call]\n");
                        in_call = true;
                    }
                    short
                }
                None => k.key,
            };
            out.push_str(&format!("\n# {}.\n", k.help));
            match (k.get)(self) {
                Some(v) => out.push_str(&format!("{name} = {v}\n")),
                None if k.key == "control_token" && self.control_token.is_some() => {
                    out.push_str("# control_token is set (not printed)\n")
                }
                None => out.push_str(&format!("# {name} = (unset)\n")),
            }
        }
        out
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            shards: self.shards,
            io_driver: self.io_driver,
            connect_twins: self.connect_twins,
            whatsapp_bind_v4: self.whatsapp_v4,
            whatsapp_bind_v6: self.whatsapp_v6,
            internal_bind: self.internal,
            advertised: Advertised {
                wa_v4: self.advertise_v4.or(self.whatsapp_v4),
                wa_v6: self.advertise_v6.or(self.whatsapp_v6),
                internal: self.advertise_internal.unwrap_or(self.internal),
            },
            ports: match (self.port_min, self.port_max) {
                (Some(min), Some(max)) => Some(PortRange { min, max }),
                _ => None,
            },
            max_calls_per_number: self.max_calls_per_number,
            capacity: self.capacity,
            transcode_weight: self.transcode_weight,
            max_shard_busy: f64::from(self.max_shard_busy_percent) / 100.0,
            cpu_limit_cores: None,
            call: self.call.clone(),
            recording: self.recording.clone(),
            bot: self.bot.clone(),
            rate_limit: RateLimitConfig {
                burst: self.rate_limit_burst,
                per_second: self.rate_limit_per_second,
                shard_burst: self.rate_limit_shard_burst,
                shard_per_second: self.rate_limit_shard_per_second,
                ..RateLimitConfig::default()
            },
            tombstones: TombstoneConfig {
                lifetime: self.tombstone_lifetime,
                max: self.max_tombstones,
            },
            shard_stall_timeout: self.shard_stall_timeout,
        }
    }

    pub fn control_config(&self) -> ControlConfig {
        ControlConfig {
            listen: self.control_listen,
            token: self.control_token.clone(),
            tls: match (&self.control_tls_cert, &self.control_tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.control_tls_client_ca.clone(),
                }),
                _ => None,
            },
            allow_unauthenticated_non_loopback: self.allow_unauthenticated,
        }
    }

    /// UDP ports one call holds: one per WhatsApp family plus the internal one.
    pub fn ports_per_call(&self) -> u32 {
        1 + u32::from(self.whatsapp_v4.is_some()) + u32::from(self.whatsapp_v6.is_some())
    }

    /// Checks across keys; each error names the key to change.
    fn validate(&self, loaded: &Loaded) -> Result<(), ConfigError> {
        let bad = |key: &'static str, problem: String| ConfigError::Invalid {
            key,
            origin: loaded.origin(key),
            problem,
        };
        self.validate_addresses(&bad)?;
        match (self.port_min, self.port_max) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad("port_max", "port_min is set; set port_max too".into()));
            }
            (None, Some(_)) => {
                return Err(bad("port_min", "port_max is set; set port_min too".into()));
            }
            (Some(min), Some(max)) if min > max => {
                return Err(bad(
                    "port_min",
                    format!(
                        "{min} is above port_max {max} ({})",
                        loaded.origin("port_max")
                    ),
                ));
            }
            (Some(min), Some(max)) => {
                let have = u64::from(max - min) + 1;
                let need = u64::from(self.capacity) * u64::from(self.ports_per_call());
                if have < need {
                    return Err(bad(
                        "port_max",
                        format!(
                            "the media port range {min}-{max} holds {have} ports, but capacity {} \
                             calls x {} ports per call needs {need}: widen the range or lower \
                             capacity",
                            self.capacity,
                            self.ports_per_call()
                        ),
                    ));
                }
            }
        }
        // An idle shard turns its loop once a second (metrics publish); less would flap.
        if self.shard_stall_timeout < Duration::from_secs(2) {
            return Err(bad(
                "shard_stall_timeout",
                "must be at least 2s (an idle shard turns once a second)".into(),
            ));
        }
        self.validate_control(&bad)?;
        self.validate_call(&bad)?;
        if self.call_log_poll_interval < Duration::from_millis(100) {
            return Err(bad(
                "call_log_poll_interval",
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }

    fn validate_addresses(
        &self,
        bad: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.whatsapp_v4.is_none() && self.whatsapp_v6.is_none() {
            return Err(bad(
                "whatsapp_v4",
                "whatsapp_v4 and whatsapp_v6 are both `none`: no WhatsApp-facing address".into(),
            ));
        }
        let families: [(&'static str, Option<IpAddr>, bool); 4] = [
            ("whatsapp_v4", self.whatsapp_v4, true),
            ("advertise_v4", self.advertise_v4, true),
            ("whatsapp_v6", self.whatsapp_v6, false),
            ("advertise_v6", self.advertise_v6, false),
        ];
        for (key, addr, want_v4) in families {
            if let Some(a) = addr
                && a.is_ipv4() != want_v4
            {
                let family = if want_v4 { "IPv4" } else { "IPv6" };
                return Err(bad(key, format!("{a} is not an {family} address")));
            }
        }
        let advertised = [
            (
                "advertise_v4",
                "whatsapp_v4",
                self.advertise_v4,
                self.whatsapp_v4,
            ),
            (
                "advertise_v6",
                "whatsapp_v6",
                self.advertise_v6,
                self.whatsapp_v6,
            ),
        ];
        for (adv_key, bind_key, adv, bind) in advertised {
            match (adv, bind) {
                (Some(_), None) => {
                    return Err(bad(adv_key, format!("set, but {bind_key} is `none`")));
                }
                (Some(a), _) if a.is_unspecified() => {
                    return Err(bad(
                        adv_key,
                        format!("{a} cannot be advertised; give the address peers send to"),
                    ));
                }
                (None, Some(b)) if b.is_unspecified() => {
                    return Err(bad(
                        adv_key,
                        format!(
                            "{bind_key} binds {b} (every interface), so set {adv_key} to the address WhatsApp should send to"
                        ),
                    ));
                }
                _ => {}
            }
        }
        match self.advertise_internal {
            Some(a) if a.is_unspecified() => Err(bad(
                "advertise_internal",
                format!("{a} cannot be advertised; give the address the media server sends to"),
            )),
            None if self.internal.is_unspecified() => Err(bad(
                "advertise_internal",
                format!(
                    "internal binds {} (every interface), so set advertise_internal to the address the media server should send to",
                    self.internal
                ),
            )),
            _ => Ok(()),
        }
    }

    fn validate_control(
        &self,
        bad: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        match (&self.control_tls_cert, &self.control_tls_key) {
            (Some(_), None) => {
                return Err(bad(
                    "control_tls_key",
                    "control_tls_cert is set; set the key too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "control_tls_cert",
                    "control_tls_key is set; set the certificate too".into(),
                ));
            }
            _ => {}
        }
        if self.control_tls_client_ca.is_some() && self.control_tls_cert.is_none() {
            return Err(bad(
                "control_tls_client_ca",
                "mTLS needs TLS: set control_tls_cert and control_tls_key too".into(),
            ));
        }
        let cfg = self.control_config();
        if !self.control_listen.ip().is_loopback()
            && !cfg.authenticated()
            && !self.allow_unauthenticated
        {
            return Err(bad(
                "control_token",
                format!(
                    "control_listen {} is not loopback: set a control token (or mTLS), or \
                     allow_unauthenticated to force it",
                    self.control_listen
                ),
            ));
        }
        let (c, m) = (self.control_listen, self.metrics_listen);
        let overlap = c.ip() == m.ip() || c.ip().is_unspecified() || m.ip().is_unspecified();
        if c.port() == m.port() && c.port() != 0 && overlap {
            return Err(bad(
                "metrics_listen",
                format!("{m} collides with control_listen {c}: use another port"),
            ));
        }
        Ok(())
    }

    fn validate_call(
        &self,
        bad: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let c = &self.call;
        // Zero intervals would spin a shard's timer loop; zero timeouts end every call at once.
        let positive = [
            ("call.ice_connect_timeout", c.ice_connect_timeout),
            ("call.ice_check_rto", c.ice_check_rto),
            ("call.consent_interval", c.consent_interval),
            ("call.consent_timeout", c.consent_timeout),
            ("call.dtls_flight_rto", c.dtls_flight_rto),
            ("call.dtls_timeout", c.dtls_timeout),
            ("call.start_media_timeout", c.start_media_timeout),
            ("call.media_timeout", c.media_timeout),
            ("call.rtcp_interval", c.rtcp_interval),
            ("call.answer_timeout", c.answer_timeout),
            ("call.accept_timeout", c.accept_timeout),
            ("call.webrtc_idle_timeout", c.webrtc_idle_timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero".into()));
            }
        }
        if c.consent_interval >= c.consent_timeout {
            return Err(bad(
                "call.consent_interval",
                format!(
                    "{} is not shorter than call.consent_timeout {}",
                    humantime::format_duration(c.consent_interval),
                    humantime::format_duration(c.consent_timeout)
                ),
            ));
        }
        if c.ptime < Duration::from_millis(10) || c.ptime > Duration::from_millis(120) {
            return Err(bad("call.ptime", "must be from 10ms to 120ms".into()));
        }
        if c.fill_after_max < c.fill_after {
            return Err(bad(
                "call.fill_after_max",
                format!(
                    "{} is shorter than call.fill_after {}",
                    humantime::format_duration(c.fill_after_max),
                    humantime::format_duration(c.fill_after)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for k in KEYS {
            assert_eq!(k.flag, k.key.replace(['.', '_'], "-"), "{}", k.key);
            assert_eq!(
                k.env,
                format!("RELAY_{}", k.key.replace('.', "_").to_ascii_uppercase()),
                "{}",
                k.key
            );
        }
    }

    #[test]
    fn every_key_has_a_setter_and_a_getter() {
        let defaults = Settings::default();
        for k in KEYS {
            let mut s = Settings::default();
            let printed = (k.get)(&defaults);
            // Round trip each key through its own printed form (or a sample when unset).
            let sample = match (printed, k.kind) {
                (Some(v), _) => toml_scalar(&v).unwrap(),
                (None, Kind::Ip) => "192.0.2.1".into(),
                (None, Kind::Integer) => "20000".into(),
                (None, Kind::SocketAddr) => "192.0.2.1:9060".into(),
                (None, _) => "x".into(),
            };
            (k.set)(&mut s, &sample).unwrap_or_else(|e| panic!("{}: {e}", k.key));
        }
    }

    #[test]
    fn call_keys_are_exactly_call_config_fields() {
        let fields: Vec<String> = toml::Table::try_from(CallConfig::default())
            .unwrap()
            .keys()
            .map(|f| format!("call.{f}"))
            .collect();
        let keys: Vec<&str> = KEYS
            .iter()
            .map(|k| k.key)
            .filter(|k| k.starts_with("call."))
            .collect();
        assert_eq!(keys.len(), fields.len());
        for f in &fields {
            assert!(keys.contains(&f.as_str()), "{f} has no key");
        }
    }
}
