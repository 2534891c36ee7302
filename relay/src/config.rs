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

/// One setting's names.
#[derive(Debug)]
pub struct Key {
    /// TOML key; `call.x` is `x` in the `[call]` table.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn key(
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    kind: Kind,
    help: &'static str,
) -> Key {
    Key {
        key,
        flag,
        env,
        kind,
        help,
    }
}

/// Every setting, in `--print-config` order. A test checks the names follow the rule above and
/// that the `call.` keys are exactly [`CallConfig`]'s fields.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    key("control_listen", "control-listen", "RELAY_CONTROL_LISTEN", Kind::SocketAddr,
        "gRPC control plane listen address"),
    key("control_token", "control-token", "RELAY_CONTROL_TOKEN", Kind::Text,
        "bearer token every control request must carry (required off loopback)"),
    key("allow_unauthenticated", "allow-unauthenticated", "RELAY_ALLOW_UNAUTHENTICATED", Kind::Bool,
        "serve the control API off loopback without a token or mTLS (not recommended)"),
    key("control_tls_cert", "control-tls-cert", "RELAY_CONTROL_TLS_CERT", Kind::Path,
        "PEM certificate chain: serve the control API over TLS"),
    key("control_tls_key", "control-tls-key", "RELAY_CONTROL_TLS_KEY", Kind::Path,
        "PEM private key of control_tls_cert"),
    key("control_tls_client_ca", "control-tls-client-ca", "RELAY_CONTROL_TLS_CLIENT_CA", Kind::Path,
        "PEM CA that control clients' certificates must chain to (mTLS)"),
    key("metrics_listen", "metrics-listen", "RELAY_METRICS_LISTEN", Kind::SocketAddr,
        "HTTP listen address for /metrics, /healthz and /readyz"),
    key("drain_deadline", "drain-deadline", "RELAY_DRAIN_DEADLINE", Kind::Duration,
        "on SIGTERM, how long calls may continue before the rest are ended (cause drained)"),
    key("shards", "shards", "RELAY_SHARDS", Kind::Integer,
        "engine shard threads; 0 = one per CPU"),
    key("io_driver", "io-driver", "RELAY_IO_DRIVER", Kind::Text,
        "shard I/O: auto (io_uring, else epoll), io_uring (or fail to start), epoll (recvmmsg/sendmmsg)"),
    key("whatsapp_v4", "whatsapp-v4", "RELAY_WHATSAPP_V4", Kind::IpOrNone,
        "WhatsApp-facing IPv4 bind address, or none"),
    key("whatsapp_v6", "whatsapp-v6", "RELAY_WHATSAPP_V6", Kind::IpOrNone,
        "WhatsApp-facing IPv6 bind address, or none"),
    key("internal", "internal", "RELAY_INTERNAL", Kind::Ip,
        "internal-leg bind address (toward the SIP media server)"),
    key("advertise_v4", "advertise-v4", "RELAY_ADVERTISE_V4", Kind::Ip,
        "public IPv4 written into SDP toward WhatsApp (NAT, Kubernetes); unset: whatsapp_v4"),
    key("advertise_v6", "advertise-v6", "RELAY_ADVERTISE_V6", Kind::Ip,
        "public IPv6 written into SDP toward WhatsApp; unset: whatsapp_v6"),
    key("advertise_internal", "advertise-internal", "RELAY_ADVERTISE_INTERNAL", Kind::Ip,
        "address written into the internal leg's SDP; unset: internal"),
    key("port_min", "port-min", "RELAY_PORT_MIN", Kind::Integer,
        "lowest UDP media port (with port_max); unset: ports chosen by the OS"),
    key("port_max", "port-max", "RELAY_PORT_MAX", Kind::Integer,
        "highest UDP media port, inclusive"),
    key("max_calls_per_number", "max-calls-per-number", "RELAY_MAX_CALLS_PER_NUMBER", Kind::Integer,
        "concurrent calls per business number (Meta's limit is 1000)"),
    key("capacity", "capacity", "RELAY_CAPACITY", Kind::Integer,
        "calls this relay admits in total; /readyz turns 503 at it"),
    key("max_shard_busy_percent", "max-shard-busy-percent", "RELAY_MAX_SHARD_BUSY_PERCENT", Kind::Integer,
        "refuse new calls (UNAVAILABLE, /readyz 503) while every shard worked at least this share of the last second; 100 = never"),
    key("rate_limit_burst", "rate-limit-burst", "RELAY_RATE_LIMIT_BURST", Kind::Integer,
        "datagrams a source IP no call knows may send at once before it is dropped unread"),
    key("rate_limit_per_second", "rate-limit-per-second", "RELAY_RATE_LIMIT_PER_SECOND", Kind::Integer,
        "... and per second after the burst (0: no refill)"),
    key("rate_limit_shard_burst", "rate-limit-shard-burst", "RELAY_RATE_LIMIT_SHARD_BURST", Kind::Integer,
        "per shard, datagrams all sources no call knows may send at once together (spoofed floods from many addresses); 0: no shard-wide cap"),
    key("rate_limit_shard_per_second", "rate-limit-shard-per-second", "RELAY_RATE_LIMIT_SHARD_PER_SECOND", Kind::Integer,
        "... and per second after that burst (0: no refill)"),
    key("tombstone_lifetime", "tombstone-lifetime", "RELAY_TOMBSTONE_LIFETIME", Kind::Duration,
        "an ended or terminated call ID refuses CreateCall (FAILED_PRECONDITION) and GetCall shows its end for this long; 0s: not remembered"),
    key("max_tombstones", "max-tombstones", "RELAY_MAX_TOMBSTONES", Kind::Integer,
        "ended call IDs remembered at most (the oldest is forgotten first)"),
    key("shard_stall_timeout", "shard-stall-timeout", "RELAY_SHARD_STALL_TIMEOUT", Kind::Duration,
        "/healthz fails when an engine shard has not turned its loop for this long"),
    key("log_json", "log-json", "RELAY_LOG_JSON", Kind::Bool,
        "log JSON lines instead of text"),
    key("call_log_dir", "call-log-dir", "RELAY_CALL_LOG_DIR", Kind::Path,
        "write one JSON record per ended call to DIR/calls-YYYY-MM-DD.jsonl (UTC)"),
    key("call_log_poll_interval", "call-log-poll-interval", "RELAY_CALL_LOG_POLL_INTERVAL", Kind::Duration,
        "how often the call log samples live calls' statistics"),
    key("homer", "homer", "RELAY_HOMER", Kind::SocketAddr,
        "send per-call RTCP and quality reports over HEP3/UDP to this Homer collector (as rtpengine's --homer)"),
    key("homer_id", "homer-id", "RELAY_HOMER_ID", Kind::Integer,
        "HEP capture agent ID the reports carry"),
    key("recording_dir", "recording-dir", "RELAY_RECORDING_DIR", Kind::Path,
        "write call recordings (StartRecording) under DIR; unset: recording is refused"),
    key("recording_name_template", "recording-name-template", "RELAY_RECORDING_NAME_TEMPLATE", Kind::Text,
        "a recording's file name under recording_dir, without extension ({call_id} {business} {consumer} {date} {time} {id}; / makes subdirectories)"),
    key("recording_queue_packets", "recording-queue-packets", "RELAY_RECORDING_QUEUE_PACKETS", Kind::Integer,
        "packet slots (320 bytes each, and 1 in 64 more of 1.5 KiB for large payloads, allocated at start) between the shards and the recording writer; beyond, packets are dropped (counted) rather than slow a call"),
    key("bot_ca_file", "bot-ca-file", "RELAY_BOT_CA_FILE", Kind::Path,
        "PEM CA certificates trusted for voice bots' wss:// URLs besides the system's roots"),
    key("bot_connect_timeout", "bot-connect-timeout", "RELAY_BOT_CONNECT_TIMEOUT", Kind::Duration,
        "a voice bot's WebSocket (TCP, TLS, upgrade) must be open within this, or CreateCall/ReplaceInternalLeg fails with BOT_UNREACHABLE"),
    key("call.ice_connect_timeout", "call-ice-connect-timeout", "RELAY_CALL_ICE_CONNECT_TIMEOUT", Kind::Duration,
        "no working ICE pair within this ends the call (Meta 138020)"),
    key("call.ice_check_rto", "call-ice-check-rto", "RELAY_CALL_ICE_CHECK_RTO", Kind::Duration,
        "first retransmission timeout of an ICE check"),
    key("call.consent_interval", "call-consent-interval", "RELAY_CALL_CONSENT_INTERVAL", Kind::Duration,
        "RFC 7675 consent check interval"),
    key("call.consent_timeout", "call-consent-timeout", "RELAY_CALL_CONSENT_TIMEOUT", Kind::Duration,
        "RFC 7675 consent lost after this long without a response"),
    key("call.dtls_flight_rto", "call-dtls-flight-rto", "RELAY_CALL_DTLS_FLIGHT_RTO", Kind::Duration,
        "first DTLS flight retransmission timeout"),
    key("call.dtls_timeout", "call-dtls-timeout", "RELAY_CALL_DTLS_TIMEOUT", Kind::Duration,
        "DTLS handshake not done within this ends the call (Meta 138019)"),
    key("call.start_media_timeout", "call-start-media-timeout", "RELAY_CALL_START_MEDIA_TIMEOUT", Kind::Duration,
        "gate open and no media from WhatsApp within this ends the call (Meta 138023)"),
    key("call.media_timeout", "call-media-timeout", "RELAY_CALL_MEDIA_TIMEOUT", Kind::Duration,
        "media from WhatsApp stopped this long ends the call (Meta 138021)"),
    key("call.rtcp_interval", "call-rtcp-interval", "RELAY_CALL_RTCP_INTERVAL", Kind::Duration,
        "RTCP report interval per leg"),
    key("call.ptime", "call-ptime", "RELAY_CALL_PTIME", Kind::Duration,
        "packet time of generated audio (silence fill)"),
    key("call.silence_fill", "call-silence-fill", "RELAY_CALL_SILENCE_FILL", Kind::Bool,
        "send Opus silence to WhatsApp while the internal leg is quiet"),
    key("call.fill_after", "call-fill-after", "RELAY_CALL_FILL_AFTER", Kind::Duration,
        "the internal leg counts as quiet after this long without a packet"),
    key("call.prebuffer_packets", "call-prebuffer-packets", "RELAY_CALL_PREBUFFER_PACKETS", Kind::Integer,
        "internal packets held until the WhatsApp leg can carry them (20 ms each)"),
    key("call.internal_silence_timeout", "call-internal-silence-timeout", "RELAY_CALL_INTERNAL_SILENCE_TIMEOUT", Kind::Duration,
        "the internal leg silent this long raises an internal_leg_silent event"),
    key("call.keep_dtls_state", "call-keep-dtls-state", "RELAY_CALL_KEEP_DTLS_STATE", Kind::Bool,
        "keep the WhatsApp leg's DTLS state after the handshake (reads Meta's close_notify; ~10 KiB a call)"),
    key("call.end_on_internal_silence", "call-end-on-internal-silence", "RELAY_CALL_END_ON_INTERNAL_SILENCE", Kind::Bool,
        "... and ends the call (cause internal_leg_timeout)"),
    key("call.one_way_timeout", "call-one-way-timeout", "RELAY_CALL_ONE_WAY_TIMEOUT", Kind::Duration,
        "media from one leg only for this long raises a one_way_audio event"),
    key("call.fill_after_max", "call-fill-after-max", "RELAY_CALL_FILL_AFTER_MAX", Kind::Duration,
        "the fill wait adapts to the internal leg's jitter up to this (= fill_after: fixed)"),
    key("call.answer_timeout", "call-answer-timeout", "RELAY_CALL_ANSWER_TIMEOUT", Kind::Duration,
        "business-initiated: no Meta answer within this of create ends the call (answer_timeout)"),
    key("call.accept_timeout", "call-accept-timeout", "RELAY_CALL_ACCEPT_TIMEOUT", Kind::Duration,
        "offer and answer known but no OpenGate within this ends the call (accept_timeout)"),
    key("call.max_call_duration", "call-max-call-duration", "RELAY_CALL_MAX_CALL_DURATION", Kind::Duration,
        "a call ends at this age whatever it does (max_duration); 0 = no limit"),
    key("call.webrtc_idle_timeout", "call-webrtc-idle-timeout", "RELAY_CALL_WEBRTC_IDLE_TIMEOUT", Kind::Duration,
        "a browser leg with no consent check and no media for this long ends the call"),
];

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
    set(&mut loaded.settings, k.key, v).map_err(|problem| ConfigError::Invalid {
        key: k.key,
        origin: origin.clone(),
        problem,
    })?;
    loaded.origins.insert(k.key, origin);
    Ok(())
}

/// Parse `v` for `key` and store it.
fn set(s: &mut Settings, key: &str, v: &str) -> Result<(), String> {
    let c = &mut s.call;
    match key {
        "control_listen" => s.control_listen = socket_addr(v)?,
        "control_token" => s.control_token = Some(non_empty(v)?.to_string()),
        "allow_unauthenticated" => s.allow_unauthenticated = boolean(v)?,
        "control_tls_cert" => s.control_tls_cert = Some(path(v)?),
        "control_tls_key" => s.control_tls_key = Some(path(v)?),
        "control_tls_client_ca" => s.control_tls_client_ca = Some(path(v)?),
        "metrics_listen" => s.metrics_listen = socket_addr(v)?,
        "drain_deadline" => s.drain_deadline = duration(v)?,
        "shards" => s.shards = integer(v, 0, 1024)?,
        "io_driver" => s.io_driver = v.parse()?,
        "whatsapp_v4" => s.whatsapp_v4 = ip_or_none(v)?,
        "whatsapp_v6" => s.whatsapp_v6 = ip_or_none(v)?,
        "internal" => s.internal = ip(v)?,
        "advertise_v4" => s.advertise_v4 = Some(ip(v)?),
        "advertise_v6" => s.advertise_v6 = Some(ip(v)?),
        "advertise_internal" => s.advertise_internal = Some(ip(v)?),
        "port_min" => s.port_min = Some(integer(v, 1, u16::MAX)?),
        "port_max" => s.port_max = Some(integer(v, 1, u16::MAX)?),
        "max_calls_per_number" => s.max_calls_per_number = integer(v, 1, u32::MAX)?,
        "capacity" => s.capacity = integer(v, 1, u32::MAX)?,
        "max_shard_busy_percent" => s.max_shard_busy_percent = integer(v, 1, 100)?,
        "rate_limit_burst" => s.rate_limit_burst = integer(v, 1, u32::MAX)?,
        "rate_limit_per_second" => s.rate_limit_per_second = integer(v, 0, u32::MAX)?,
        "rate_limit_shard_burst" => s.rate_limit_shard_burst = integer(v, 0, u32::MAX)?,
        "rate_limit_shard_per_second" => s.rate_limit_shard_per_second = integer(v, 0, u32::MAX)?,
        "tombstone_lifetime" => s.tombstone_lifetime = duration(v)?,
        "max_tombstones" => s.max_tombstones = integer(v, 0, 10_000_000)?,
        "shard_stall_timeout" => s.shard_stall_timeout = duration(v)?,
        "log_json" => s.log_json = boolean(v)?,
        "call_log_dir" => s.call_log_dir = Some(path(v)?),
        "call_log_poll_interval" => s.call_log_poll_interval = duration(v)?,
        "homer" => s.homer = Some(socket_addr(v)?),
        "homer_id" => s.homer_id = integer(v, 0, u32::MAX)?,
        "recording_dir" => s.recording.dir = Some(path(v)?),
        "recording_name_template" => s.recording.name_template = non_empty(v)?.to_string(),
        "recording_queue_packets" => s.recording.queue_packets = integer(v, 16, 1 << 20)?,
        "bot_ca_file" => s.bot.ca_file = Some(path(v)?),
        "bot_connect_timeout" => s.bot.connect_timeout = duration(v)?,
        "call.ice_connect_timeout" => c.ice_connect_timeout = duration(v)?,
        "call.ice_check_rto" => c.ice_check_rto = duration(v)?,
        "call.consent_interval" => c.consent_interval = duration(v)?,
        "call.consent_timeout" => c.consent_timeout = duration(v)?,
        "call.dtls_flight_rto" => c.dtls_flight_rto = duration(v)?,
        "call.dtls_timeout" => c.dtls_timeout = duration(v)?,
        "call.start_media_timeout" => c.start_media_timeout = duration(v)?,
        "call.media_timeout" => c.media_timeout = duration(v)?,
        "call.rtcp_interval" => c.rtcp_interval = duration(v)?,
        "call.ptime" => c.ptime = duration(v)?,
        "call.silence_fill" => c.silence_fill = boolean(v)?,
        "call.fill_after" => c.fill_after = duration(v)?,
        "call.prebuffer_packets" => c.prebuffer_packets = integer(v, 0, 3000)?,
        "call.internal_silence_timeout" => c.internal_silence_timeout = duration(v)?,
        "call.end_on_internal_silence" => c.end_on_internal_silence = boolean(v)?,
        "call.keep_dtls_state" => c.keep_dtls_state = boolean(v)?,
        "call.one_way_timeout" => c.one_way_timeout = duration(v)?,
        "call.fill_after_max" => c.fill_after_max = duration(v)?,
        "call.answer_timeout" => c.answer_timeout = duration(v)?,
        "call.accept_timeout" => c.accept_timeout = duration(v)?,
        "call.max_call_duration" => c.max_call_duration = duration(v)?,
        "call.webrtc_idle_timeout" => c.webrtc_idle_timeout = duration(v)?,
        _ => return Err("not a configuration key".into()),
    }
    Ok(())
}

/// The effective value of `key`, as TOML; `None` when unset.
fn get(s: &Settings, key: &str) -> Option<toml::Value> {
    use toml::Value as V;
    let c = &s.call;
    let text = |v: &dyn fmt::Display| Some(V::String(v.to_string()));
    let opt_ip = |v: Option<IpAddr>| v.map(|v| V::String(v.to_string()));
    let dur = |d: Duration| Some(V::String(humantime::format_duration(d).to_string()));
    let int = |i: u64| Some(V::Integer(i64::try_from(i).unwrap_or(i64::MAX)));
    let ip_or_none = |ip: Option<IpAddr>| text(&ip.map_or("none".to_string(), |ip| ip.to_string()));
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| V::String(p.display().to_string()));
    match key {
        "control_listen" => text(&s.control_listen),
        // Never printed: --print-config output ends up in tickets and chat.
        "control_token" => None,
        "allow_unauthenticated" => Some(V::Boolean(s.allow_unauthenticated)),
        "control_tls_cert" => path(&s.control_tls_cert),
        "control_tls_key" => path(&s.control_tls_key),
        "control_tls_client_ca" => path(&s.control_tls_client_ca),
        "metrics_listen" => text(&s.metrics_listen),
        "drain_deadline" => dur(s.drain_deadline),
        "shards" => int(s.shards as u64),
        "io_driver" => text(&s.io_driver),
        "whatsapp_v4" => ip_or_none(s.whatsapp_v4),
        "whatsapp_v6" => ip_or_none(s.whatsapp_v6),
        "internal" => text(&s.internal),
        "advertise_v4" => opt_ip(s.advertise_v4),
        "advertise_v6" => opt_ip(s.advertise_v6),
        "advertise_internal" => opt_ip(s.advertise_internal),
        "port_min" => s.port_min.and_then(|p| int(p.into())),
        "port_max" => s.port_max.and_then(|p| int(p.into())),
        "max_calls_per_number" => int(s.max_calls_per_number.into()),
        "capacity" => int(s.capacity.into()),
        "max_shard_busy_percent" => int(s.max_shard_busy_percent.into()),
        "rate_limit_burst" => int(s.rate_limit_burst.into()),
        "rate_limit_per_second" => int(s.rate_limit_per_second.into()),
        "rate_limit_shard_burst" => int(s.rate_limit_shard_burst.into()),
        "rate_limit_shard_per_second" => int(s.rate_limit_shard_per_second.into()),
        "tombstone_lifetime" => dur(s.tombstone_lifetime),
        "max_tombstones" => int(s.max_tombstones as u64),
        "shard_stall_timeout" => dur(s.shard_stall_timeout),
        "log_json" => Some(V::Boolean(s.log_json)),
        "call_log_dir" => path(&s.call_log_dir),
        "call_log_poll_interval" => dur(s.call_log_poll_interval),
        "homer" => s.homer.map(|a| V::String(a.to_string())),
        "homer_id" => int(s.homer_id.into()),
        "recording_dir" => path(&s.recording.dir),
        "recording_name_template" => text(&s.recording.name_template),
        "recording_queue_packets" => int(s.recording.queue_packets as u64),
        "bot_ca_file" => path(&s.bot.ca_file),
        "bot_connect_timeout" => dur(s.bot.connect_timeout),
        "call.ice_connect_timeout" => dur(c.ice_connect_timeout),
        "call.ice_check_rto" => dur(c.ice_check_rto),
        "call.consent_interval" => dur(c.consent_interval),
        "call.consent_timeout" => dur(c.consent_timeout),
        "call.dtls_flight_rto" => dur(c.dtls_flight_rto),
        "call.dtls_timeout" => dur(c.dtls_timeout),
        "call.start_media_timeout" => dur(c.start_media_timeout),
        "call.media_timeout" => dur(c.media_timeout),
        "call.rtcp_interval" => dur(c.rtcp_interval),
        "call.ptime" => dur(c.ptime),
        "call.silence_fill" => Some(V::Boolean(c.silence_fill)),
        "call.fill_after" => dur(c.fill_after),
        "call.prebuffer_packets" => int(c.prebuffer_packets as u64),
        "call.internal_silence_timeout" => dur(c.internal_silence_timeout),
        "call.end_on_internal_silence" => Some(V::Boolean(c.end_on_internal_silence)),
        "call.keep_dtls_state" => Some(V::Boolean(c.keep_dtls_state)),
        "call.one_way_timeout" => dur(c.one_way_timeout),
        "call.fill_after_max" => dur(c.fill_after_max),
        "call.answer_timeout" => dur(c.answer_timeout),
        "call.accept_timeout" => dur(c.accept_timeout),
        "call.max_call_duration" => dur(c.max_call_duration),
        "call.webrtc_idle_timeout" => dur(c.webrtc_idle_timeout),
        _ => None,
    }
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
            match get(self, k.key) {
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
            max_shard_busy: f64::from(self.max_shard_busy_percent) / 100.0,
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
            let printed = get(&defaults, k.key);
            // Round trip each key through its own printed form (or a sample when unset).
            let sample = match (printed, k.kind) {
                (Some(v), _) => toml_scalar(&v).unwrap(),
                (None, Kind::Ip) => "192.0.2.1".into(),
                (None, Kind::Integer) => "20000".into(),
                (None, Kind::SocketAddr) => "192.0.2.1:9060".into(),
                (None, _) => "x".into(),
            };
            set(&mut s, k.key, &sample).unwrap_or_else(|e| panic!("{}: {e}", k.key));
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
