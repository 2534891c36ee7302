//! UDP media port pool use per address family, for `relay_udp_ports_{used,free}`.
//!
//! The pool is what the relay binds media sockets from: the configured `port_min..=port_max`
//! range, or the kernel's ephemeral range (`net.ipv4.ip_local_port_range`) when none is set, on
//! each of the relay's bind addresses of that family. "Used" is read from the kernel's socket
//! tables (`/proc/net/udp`, `/proc/net/udp6`) at scrape time rather than counted by the
//! allocator: it then also sees ports taken by anything else in the network namespace (another
//! process, a leaked socket), which is what decides whether the next bind succeeds.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::engine::{EngineConfig, PortRange};

/// One family's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPool {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// (address, port) pairs the relay could bind: range size × bind addresses.
    pub size: u64,
    pub used: u64,
}

impl PortPool {
    pub fn free(&self) -> u64 {
        self.size.saturating_sub(self.used)
    }
}

/// Where the relay binds media sockets (from the engine's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    pub range: Option<PortRange>,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl PortPlan {
    pub fn of(cfg: &EngineConfig) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for ip in [
            cfg.whatsapp_bind_v4,
            cfg.whatsapp_bind_v6,
            Some(cfg.internal_bind),
        ]
        .into_iter()
        .flatten()
        {
            match ip {
                IpAddr::V4(a) if !v4.contains(&a) => v4.push(a),
                IpAddr::V6(a) if !v6.contains(&a) => v6.push(a),
                _ => {}
            }
        }
        PortPlan {
            range: cfg.ports,
            v4,
            v6,
        }
    }

    /// Read the kernel's tables now. A family the relay does not bind is left out.
    pub fn read(&self) -> Vec<PortPool> {
        let range = self.range.or_else(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .and_then(|s| parse_local_port_range(&s))
        });
        let Some(range) = range else {
            return Vec::new();
        };
        let mut pools = Vec::new();
        if !self.v4.is_empty() {
            let ours: Vec<IpAddr> = self.v4.iter().map(|a| IpAddr::V4(*a)).collect();
            let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
            pools.push(pool("ipv4", range, &ours, &table));
        }
        if !self.v6.is_empty() {
            let ours: Vec<IpAddr> = self.v6.iter().map(|a| IpAddr::V6(*a)).collect();
            let table = std::fs::read_to_string("/proc/net/udp6").unwrap_or_default();
            pools.push(pool("ipv6", range, &ours, &table));
        }
        pools
    }
}

fn pool(family: &'static str, range: PortRange, ours: &[IpAddr], table: &str) -> PortPool {
    let span = u64::from(range.max.saturating_sub(range.min)) + 1;
    let size = span * ours.len() as u64;
    // A socket on the wildcard address takes its port on every address.
    let mut used: HashSet<(IpAddr, u16)> = HashSet::new();
    for (ip, port) in table.lines().filter_map(parse_local) {
        if port < range.min || port > range.max {
            continue;
        }
        if ip.is_unspecified() {
            used.extend(ours.iter().map(|a| (*a, port)));
        } else if ours.contains(&ip) {
            used.insert((ip, port));
        }
    }
    PortPool {
        family,
        size,
        used: (used.len() as u64).min(size),
    }
}

/// The local address of one `/proc/net/udp{,6}` row: `sl local_address rem_address ...`, the
/// address as the kernel's in-memory (network order) words printed as native-endian hex.
fn parse_local(line: &str) -> Option<(IpAddr, u16)> {
    let local = line.split_whitespace().nth(1)?;
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

fn parse_local_port_range(s: &str) -> Option<PortRange> {
    let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
    let (min, max) = (it.next()??, it.next()??);
    (min <= max).then_some(PortRange { min, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex4(a: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(a.octets()))
    }

    fn hex6(a: Ipv6Addr) -> String {
        a.octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    }

    fn row(local: &str, port: u16) -> String {
        format!(
            "  12: {local}:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 123 2 0000000000000000 0"
        )
    }

    #[test]
    fn rows_of_the_kernel_table_parse_on_this_host() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops";
        assert_eq!(parse_local(header), None);
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(
            parse_local(&row(&hex4(lo), 20_000)),
            Some((IpAddr::V4(lo), 20_000))
        );
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            parse_local(&row(&hex6(v6), 20_001)),
            Some((IpAddr::V6(v6), 20_001))
        );
    }

    #[test]
    fn used_counts_our_addresses_in_range_and_wildcards_on_each() {
        let a: Ipv4Addr = "10.0.0.5".parse().unwrap();
        let b: Ipv4Addr = "192.0.2.9".parse().unwrap();
        let ours = [IpAddr::V4(a), IpAddr::V4(b)];
        let table = [
            row(&hex4(a), 20_000),                           // ours, in range
            row(&hex4(b), 20_000), // same port, other address: another pair
            row(&hex4(a), 19_999), // out of range
            row(&hex4("10.9.9.9".parse().unwrap()), 20_001), // not our address
            row(&hex4(Ipv4Addr::UNSPECIFIED), 20_002), // wildcard: taken on both
        ]
        .join("\n");
        let p = pool(
            "ipv4",
            PortRange {
                min: 20_000,
                max: 20_009,
            },
            &ours,
            &table,
        );
        assert_eq!(p.size, 20);
        assert_eq!(p.used, 4);
        assert_eq!(p.free(), 16);
    }

    #[test]
    fn the_plan_groups_bind_addresses_by_family() {
        let cfg = EngineConfig::default(); // 127.0.0.1 twice and ::1
        let plan = PortPlan::of(&cfg);
        assert_eq!(plan.v4, vec![Ipv4Addr::LOCALHOST]);
        assert_eq!(plan.v6, vec![Ipv6Addr::LOCALHOST]);
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(PortRange {
                min: 32768,
                max: 60999
            })
        );
        assert_eq!(parse_local_port_range("9 1"), None);
    }

    #[test]
    fn a_socket_bound_in_the_range_shows_as_used() {
        // A real socket in this process, found through the kernel's table.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let plan = PortPlan {
            range: Some(PortRange {
                min: port,
                max: port,
            }),
            v4: vec![Ipv4Addr::LOCALHOST],
            v6: Vec::new(),
        };
        let pools = plan.read();
        assert_eq!(pools.len(), 1);
        assert_eq!(
            (pools[0].family, pools[0].used, pools[0].free()),
            ("ipv4", 1, 0)
        );
        drop(s);
        assert_eq!(plan.read()[0].used, 0);
    }
}
