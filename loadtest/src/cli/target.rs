//! `--target`: start or reach what is loaded (the relay, rtpengine, a raw forwarder), check the
//! WhatsApp-side security it can do, and the session options for it.

use std::time::Duration;

use relay::srtp::SrtpProfile;
use serde::Serialize;

use super::run::recording_dir;
use super::{CliError, Common};
use crate::generator::GenConfig;
use crate::raw::{Layout, RawForwarder, RawOptions};
use crate::session::{Backend, Options, WaMode};
use crate::target::{self, RelayProcess, SpawnOptions};
use crate::target_rtpengine::{NgClient, RtpEngineOptions, RtpEngineProcess};

/// What `--target` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Relay,
    /// The raw forwarder with a socket per call and leg.
    Raw,
    /// The raw forwarder with one socket, demultiplexed by source address.
    RawSingle,
    /// The raw forwarder with a socket per call toward WhatsApp and one shared socket toward
    /// the internal side, demultiplexed by source address (every generator peer gets its own
    /// socket, as with raw-single).
    RawSharedInternal,
    /// The raw forwarder with a port per call and leg whose datagrams an eBPF sk_lookup
    /// program steers to one receive socket (ports 20000-29999); replies leave from the
    /// per-call sockets. Needs root and a network namespace of its own:
    /// `unshare -n sh -c 'ip link set lo up && exec loadtest --target raw-steered ...'`.
    RawSteered,
    Rtpengine,
}

impl TargetKind {
    /// One of the raw forwarders.
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            TargetKind::Raw
                | TargetKind::RawSingle
                | TargetKind::RawSharedInternal
                | TargetKind::RawSteered
        )
    }
}

/// Which WhatsApp-side security each target can do.
pub(super) fn check_mode(kind: TargetKind, wa: WaMode) -> Result<(), CliError> {
    let why = match (kind, wa) {
        (TargetKind::Relay, WaMode::Plain) => "the relay requires SRTP on the WhatsApp leg",
        (TargetKind::Rtpengine, WaMode::Dtls) => {
            "this tool drives rtpengine with SDES or plain RTP on the WhatsApp side (ICE-lite + DTLS toward Meta is what the relay specialises in)"
        }
        (k, WaMode::Dtls | WaMode::Sdes) if k.is_raw() => "the raw forwarders only copy plain RTP",
        _ => return Ok(()),
    };
    Err(CliError::Unsupported {
        wa,
        target: kind,
        why,
    })
}

/// A started target process, stopped when dropped.
pub(super) enum Child {
    Relay(#[allow(dead_code)] RelayProcess),
    RtpEngine(#[allow(dead_code)] RtpEngineProcess),
}

/// The backend for `kind`, started (relay, rtpengine, raw forwarder) or reached (--relay-addr,
/// --rtpengine-ng), with a description for the report and the child to keep alive.
pub(super) async fn open_target(
    o: &Common,
    kind: TargetKind,
    relay_cpu: Option<usize>,
) -> Result<(Backend, String, Option<Child>), CliError> {
    match kind {
        TargetKind::Raw
        | TargetKind::RawSingle
        | TargetKind::RawSharedInternal
        | TargetKind::RawSteered => {
            let (layout, desc) = match kind {
                TargetKind::Raw => (
                    Layout::PerLeg,
                    "raw forwarder: a socket per call and leg, epoll + recvmmsg/sendmmsg, no logic",
                ),
                TargetKind::RawSingle => (
                    Layout::Single,
                    "raw forwarder: one socket, recvmmsg/sendmmsg, hash demux by source, no logic",
                ),
                TargetKind::RawSharedInternal => (
                    Layout::SharedInternal,
                    "raw forwarder: a socket per call toward WhatsApp, one shared internal socket (demux by source), no logic",
                ),
                _ => (
                    Layout::Steered,
                    "raw forwarder: a port per call and leg, sk_lookup steers all to one receive socket (demux by IP_ORIGDSTADDR), sends from the per-call sockets, no logic",
                ),
            };
            let opts = RawOptions {
                buffer: o.raw_buffer,
                gro: o.raw_gro,
                count: o.raw_count,
            };
            let f = RawForwarder::start_with(GenConfig::default().bind_ip, relay_cpu, layout, opts)
                .map_err(CliError::Raw)?;
            let desc = if opts == RawOptions::default() {
                desc.to_string()
            } else {
                format!("{desc}; {opts:?}")
            };
            // Let the thread record its ID for the CPU meter.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok((Backend::Raw(f), desc, None))
        }
        TargetKind::Rtpengine => {
            if let Some(addr) = o.rtpengine_ng {
                let ng = NgClient::connect(addr).await?;
                ng.ping().await?;
                return Ok((
                    Backend::RtpEngine {
                        ng: std::sync::Arc::new(ng),
                        pid: o.rtpengine_pid,
                    },
                    format!("rtpengine at {addr} (ng)"),
                    None,
                ));
            }
            let opts = RtpEngineOptions {
                bin: o.rtpengine_bin.clone(),
                threads: o.rtpengine_threads,
                cpu: relay_cpu,
                log: o.rtpengine_log.clone(),
                ..RtpEngineOptions::default()
            };
            let mut p = RtpEngineProcess::spawn(&opts)?;
            let ng = NgClient::connect(p.ng).await?;
            p.wait_ready(&ng, Duration::from_secs(10)).await?;
            let pid = p.pid();
            if !o.quiet {
                eprintln!(
                    "rtpengine {} started: pid {pid}, ng {}, num-threads {}, CPU {}, log {}",
                    opts.bin.display(),
                    p.ng,
                    opts.threads,
                    relay_cpu.map_or_else(|| "any".into(), |c| c.to_string()),
                    p.log.display()
                );
            }
            Ok((
                Backend::RtpEngine {
                    ng: std::sync::Arc::new(ng),
                    pid: Some(pid),
                },
                format!(
                    "rtpengine {} (userspace, num-threads {})",
                    opts.bin.display(),
                    opts.threads
                ),
                Some(Child::RtpEngine(p)),
            ))
        }
        TargetKind::Relay => {
            if let Some(addr) = &o.relay_addr {
                let client =
                    target::connect(addr, o.token.clone(), Duration::from_secs(10), None).await?;
                return Ok((
                    Backend::Relay {
                        client,
                        pid: o.relay_pid,
                        metrics: o.relay_metrics,
                    },
                    format!("relay at {addr}"),
                    None,
                ));
            }
            let bin = o
                .relay_bin
                .clone()
                .or_else(target::default_relay_bin)
                .ok_or(CliError::NoRelay)?;
            let metrics = target::free_port().map_err(target::TargetError::Port)?;
            let mut extra_args = vec!["--metrics-listen".to_string(), metrics.to_string()];
            if o.record
                && !o
                    .relay_args
                    .iter()
                    .any(|a| a.starts_with("--recording-dir"))
            {
                extra_args.push(format!("--recording-dir={}", recording_dir().display()));
            }
            extra_args.extend(o.relay_args.iter().cloned());
            let mut p = RelayProcess::spawn(&SpawnOptions {
                bin: bin.clone(),
                shards: o.relay_shards,
                cpu: relay_cpu,
                extra_args,
                log: o.relay_log.clone(),
            })?;
            let client = target::connect(
                &p.endpoint(),
                o.token.clone(),
                Duration::from_secs(15),
                Some(&mut p),
            )
            .await?;
            let pid = p.pid();
            if !o.quiet {
                eprintln!(
                    "relay {} started: pid {pid}, control {}, shards {}, log {}",
                    bin.display(),
                    p.control,
                    o.relay_shards,
                    p.log.display()
                );
            }
            Ok((
                Backend::Relay {
                    client,
                    pid: Some(pid),
                    // A --relay-arg=--metrics-listen=... given by the user wins over ours.
                    metrics: (!o
                        .relay_args
                        .iter()
                        .any(|a| a.starts_with("--metrics-listen")))
                    .then_some(metrics),
                },
                format!("relay {} (--shards {})", bin.display(), o.relay_shards),
                Some(Child::Relay(p)),
            ))
        }
    }
}

pub(super) fn session_options(
    o: &Common,
    kind: TargetKind,
    wa: WaMode,
    gen_cpu: Option<usize>,
) -> Options {
    let profiles = if !o.profiles.is_empty() {
        o.profiles.clone()
    } else if wa == WaMode::Sdes {
        // The SDES suite SIP equipment (and rtpengine) use most.
        vec![SrtpProfile::Aes128CmHmacSha1_80]
    } else {
        Options::default().profiles
    };
    Options {
        generator: GenConfig {
            threads: o.threads.max(1),
            // One forwarder socket for every call: only the peers' own addresses tell the
            // calls apart.
            // (raw-shared-internal: the internal peers must send from a port per call.)
            pool: if matches!(kind, TargetKind::RawSingle | TargetKind::RawSharedInternal) {
                0
            } else {
                o.pool
            },
            cpus: gen_cpu.into_iter().collect(),
            spacing: o.spacing,
            ..GenConfig::default()
        },
        profiles,
        setup_rate: o.setup_rate,
        settle: o.settle,
        warmup: o.warmup,
        live: !o.quiet,
        wa_mode: wa,
        record: o.record,
        ..Options::default()
    }
}
