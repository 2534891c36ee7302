//! Process configuration: flags with matching `RELAY_*` environment variables. Defaults run a
//! working relay on loopback with no configuration at all.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;

use crate::call::{Advertised, CallConfig};
use crate::engine::{EngineConfig, PortRange};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "relay",
    version,
    about = "Media relay for WhatsApp Business Calling"
)]
pub struct Args {
    /// gRPC control plane listen address.
    #[arg(long, env = "RELAY_CONTROL_LISTEN", default_value = "127.0.0.1:7070")]
    pub control_listen: SocketAddr,
    /// Bearer token required on every control request.
    #[arg(long, env = "RELAY_CONTROL_TOKEN")]
    pub control_token: Option<String>,
    /// Allow a non-loopback control address without authentication (not recommended).
    #[arg(long, env = "RELAY_ALLOW_UNAUTHENTICATED", default_value_t = false)]
    pub allow_unauthenticated: bool,
    /// Shards (threads); 0 = one per core.
    #[arg(long, env = "RELAY_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// WhatsApp-facing IPv4 bind address ("none" to disable).
    #[arg(long, env = "RELAY_WHATSAPP_V4", default_value = "127.0.0.1")]
    pub whatsapp_v4: String,
    /// WhatsApp-facing IPv6 bind address ("none" to disable).
    #[arg(long, env = "RELAY_WHATSAPP_V6", default_value = "::1")]
    pub whatsapp_v6: String,
    /// Internal-leg bind address.
    #[arg(long, env = "RELAY_INTERNAL", default_value = "127.0.0.1")]
    pub internal: IpAddr,
    /// Public IPv4 written into SDP toward WhatsApp (NAT, Kubernetes); default: the bind address.
    #[arg(long, env = "RELAY_ADVERTISE_V4")]
    pub advertise_v4: Option<IpAddr>,
    /// Public IPv6 written into SDP toward WhatsApp.
    #[arg(long, env = "RELAY_ADVERTISE_V6")]
    pub advertise_v6: Option<IpAddr>,
    /// Internal-leg address written into the internal SDP.
    #[arg(long, env = "RELAY_ADVERTISE_INTERNAL")]
    pub advertise_internal: Option<IpAddr>,
    /// Lowest media port (with --port-max); default: ports chosen by the OS.
    #[arg(long, env = "RELAY_PORT_MIN")]
    pub port_min: Option<u16>,
    #[arg(long, env = "RELAY_PORT_MAX")]
    pub port_max: Option<u16>,
    /// Concurrent calls per business number (Meta's limit is 1000).
    #[arg(long, env = "RELAY_MAX_CALLS_PER_NUMBER", default_value_t = 1000)]
    pub max_calls_per_number: u32,
    /// Calls this relay admits in total.
    #[arg(long, env = "RELAY_CAPACITY", default_value_t = 10_000)]
    pub capacity: u32,
    /// Log as JSON lines.
    #[arg(long, env = "RELAY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

fn parse_opt_ip(key: &str, v: &str) -> Result<Option<IpAddr>, String> {
    if v.eq_ignore_ascii_case("none") || v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{key}: `{v}` is not an IP address (or `none`)"))
}

impl Args {
    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        let v4 = parse_opt_ip("--whatsapp-v4", &self.whatsapp_v4)?;
        let v6 = parse_opt_ip("--whatsapp-v6", &self.whatsapp_v6)?;
        if v4.is_none() && v6.is_none() {
            return Err(
                "--whatsapp-v4 and --whatsapp-v6 are both `none`: no WhatsApp-facing address"
                    .into(),
            );
        }
        let ports = match (self.port_min, self.port_max) {
            (None, None) => None,
            (Some(min), Some(max)) if min <= max && min > 0 => Some(PortRange { min, max }),
            (Some(min), Some(max)) => {
                return Err(format!(
                    "--port-min {min} / --port-max {max}: not a valid range"
                ));
            }
            _ => return Err("--port-min and --port-max go together".into()),
        };
        Ok(EngineConfig {
            shards: self.shards,
            whatsapp_bind_v4: v4,
            whatsapp_bind_v6: v6,
            internal_bind: self.internal,
            advertised: Advertised {
                wa_v4: self.advertise_v4.or(v4),
                wa_v6: self.advertise_v6.or(v6),
                internal: self.advertise_internal.unwrap_or(self.internal),
            },
            ports,
            max_calls_per_number: self.max_calls_per_number,
            capacity: self.capacity,
            call: CallConfig::default(),
        })
    }
}
