//! Parsers for the values of individual SDP lines. Each takes the text after `x=` or
//! `a=name:` and returns the value or a reason; the document walker adds the line number.
//! Everything here splits on ASCII whitespace and never indexes bytes, so any UTF-8 input is
//! safe.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::model::{Candidate, Crypto, Fingerprint, MediaProto, Origin, RtpMap};

pub(crate) type Reason = String;

/// A decimal number of only ASCII digits (Rust's parsers would also take a leading `+`).
pub(crate) fn number<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An RTP payload type: 0–127 (the marker bit takes the eighth bit).
pub(crate) fn payload_type(s: &str) -> Result<u8, Reason> {
    match number::<u8>(s) {
        Some(pt) if pt <= 127 => Ok(pt),
        _ => Err(format!("payload type `{s}` is not a number from 0 to 127")),
    }
}

pub(crate) fn port(s: &str) -> Result<u16, Reason> {
    number::<u16>(s).ok_or_else(|| format!("port `{s}` is not a number from 0 to 65535"))
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
pub(crate) fn origin(value: &str) -> Result<Origin, Reason> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [
        username,
        session_id,
        session_version,
        net_type,
        addr_type,
        address,
    ] = f[..]
    else {
        return Err(format!("o= needs 6 fields, found {}", f.len()));
    };
    Ok(Origin {
        username: username.to_string(),
        session_id: session_id.to_string(),
        session_version: session_version.to_string(),
        net_type: net_type.to_string(),
        addr_type: addr_type.to_string(),
        address: address.to_string(),
    })
}

/// `c=IN IP4 <addr>[/<ttl>[/<n>]]`. Hostnames are refused: the relay does not resolve names.
pub(crate) fn connection(value: &str) -> Result<IpAddr, Reason> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [net_type, addr_type, address] = f[..] else {
        return Err(format!("c= needs 3 fields, found {}", f.len()));
    };
    if !net_type.eq_ignore_ascii_case("IN") {
        return Err(format!("network type `{net_type}` is not IN"));
    }
    if !addr_type.eq_ignore_ascii_case("IP4") && !addr_type.eq_ignore_ascii_case("IP6") {
        return Err(format!("address type `{addr_type}` is not IP4 or IP6"));
    }
    // Multicast TTL / count suffixes: not something the relay uses, but not malformed either.
    let address = address.split('/').next().unwrap_or(address);
    IpAddr::from_str(address)
        .map_err(|_| format!("address `{address}` is not an IP literal (names are not resolved)"))
}

/// `m=<media> <port>[/<count>] <proto> <fmt> …` → (media, port, proto token, formats).
pub(crate) struct MediaLine<'a> {
    pub media: &'a str,
    pub port: u16,
    pub proto: &'a str,
    pub formats: Vec<&'a str>,
}

pub(crate) fn media_line(value: &str) -> Result<MediaLine<'_>, Reason> {
    let mut f = value.split_ascii_whitespace();
    let (Some(media), Some(port_field), Some(proto)) = (f.next(), f.next(), f.next()) else {
        return Err("m= needs media, port, protocol and at least one format".to_string());
    };
    let formats: Vec<&str> = f.collect();
    if formats.is_empty() {
        return Err("m= lists no formats".to_string());
    }
    let (port_text, count) = match port_field.split_once('/') {
        Some((p, n)) => (p, Some(n)),
        None => (port_field, None),
    };
    let port = port(port_text)?;
    if let Some(n) = count
        && number::<u16>(n) != Some(1)
    {
        return Err(format!("port count `/{n}` is not supported"));
    }
    Ok(MediaLine {
        media,
        port,
        proto,
        formats,
    })
}

pub(crate) fn media_proto(token: &str) -> Result<MediaProto, Reason> {
    MediaProto::from_token(token).ok_or_else(|| {
        format!(
            "protocol `{token}` is not one the relay carries (UDP/TLS/RTP/SAVPF, RTP/SAVPF, \
             RTP/SAVP, RTP/AVP, RTP/AVPF)"
        )
    })
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
pub(crate) fn rtpmap(value: &str) -> Result<RtpMap, Reason> {
    let (pt, codec) = split_first_word(value).ok_or("rtpmap needs `<pt> <encoding>/<clock>`")?;
    let pt = payload_type(pt)?;
    let mut parts = codec.trim().split('/');
    let encoding = parts.next().unwrap_or("");
    if encoding.is_empty() || !encoding.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("encoding name `{encoding}` is not a token"));
    }
    let clock = parts.next().unwrap_or("");
    let clock_rate = number::<u32>(clock)
        .filter(|c| *c > 0)
        .ok_or_else(|| format!("clock rate `{clock}` is not a positive number"))?;
    let channels = match parts.next() {
        None => None,
        Some(c) => Some(
            number::<u8>(c)
                .filter(|c| *c > 0)
                .ok_or_else(|| format!("channel count `{c}` is not a number from 1 to 255"))?,
        ),
    };
    if parts.next().is_some() {
        return Err("rtpmap has too many `/` fields".to_string());
    }
    Ok(RtpMap {
        pt,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

/// `a=fmtp:<pt> <params>`; the parameters are kept verbatim (they may be empty).
pub(crate) fn fmtp(value: &str) -> Result<(u8, String), Reason> {
    let (pt, params) = split_first_word(value).unwrap_or((value, ""));
    Ok((payload_type(pt)?, params.trim().to_string()))
}

/// `a=rtcp-fb:<pt|*> <feedback>`.
pub(crate) fn rtcp_fb(value: &str) -> Result<(String, String), Reason> {
    let (pt, fb) = split_first_word(value).ok_or("rtcp-fb needs `<pt> <feedback>`")?;
    if pt != "*" {
        payload_type(pt)?;
    }
    Ok((pt.to_string(), fb.trim().to_string()))
}

/// `a=rtcp:<port> [IN IP4 <addr>]`.
pub(crate) fn rtcp(value: &str) -> Result<(u16, Option<IpAddr>), Reason> {
    let (p, rest) = split_first_word(value).unwrap_or((value, ""));
    let port = port(p)?;
    let addr = if rest.trim().is_empty() {
        None
    } else {
        Some(connection(rest)?)
    };
    Ok((port, addr))
}

/// `a=ptime` / `a=maxptime`, in milliseconds.
pub(crate) fn millis(value: &str) -> Result<u32, Reason> {
    number::<u32>(value)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("`{value}` is not a positive number of milliseconds"))
}

/// An ICE username fragment or password (RFC 8839 §5.4): `ice-char` (`ALPHA / DIGIT / "+" /
/// "/"`), `min` to 256 characters (4 for the ufrag, 22 for the password). Meta's passwords are
/// base64 and end in `==`, so up to two `=` are accepted as padding at the very end, and
/// nothing else: a `:` would split the STUN USERNAME (`ufrag:ufrag`) in two, and `;`, `=` or a
/// space in the middle are not credentials anyone generates.
pub(crate) fn ice_credential(what: &str, value: &str, min: usize) -> Result<String, Reason> {
    let body = value.trim_end_matches('=');
    if value.len() - body.len() > 2 {
        return Err(format!("{what} has more than two `=` of padding"));
    }
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/'))
    {
        return Err(format!(
            "{what} contains {bad:?}: RFC 8839 allows letters, digits, `+` and `/` (and `=` \
             padding at the end)"
        ));
    }
    if value.len() < min || value.len() > 256 {
        return Err(format!(
            "{what} is {} characters long; RFC 8839 requires {min} to 256",
            value.len()
        ));
    }
    Ok(value.to_string())
}

/// A single token (mid): printable ASCII, no spaces, 1–256 bytes.
pub(crate) fn token(what: &str, value: &str) -> Result<String, Reason> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > 256 {
        return Err(format!("{what} is longer than 256 bytes"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what} must be printable ASCII without spaces"));
    }
    Ok(value.to_string())
}

/// `a=fingerprint:<hash-func> <XX:XX:…>`.
pub(crate) fn fingerprint(value: &str) -> Result<Fingerprint, Reason> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [algorithm, hex] = f[..] else {
        return Err("fingerprint needs `<hash-function> <hex bytes>`".to_string());
    };
    let algorithm = algorithm.to_ascii_lowercase();
    let bytes = colon_hex(hex)?;
    match expected_len(&algorithm) {
        Some(want) if bytes.len() != want => Err(format!(
            "{algorithm} fingerprint has {} bytes, expected {want}",
            bytes.len()
        )),
        _ => Ok(Fingerprint { algorithm, bytes }),
    }
}

/// Digest sizes of the RFC 8122 hash function names.
fn expected_len(algorithm: &str) -> Option<usize> {
    Some(match algorithm {
        "md2" | "md5" => 16,
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        _ => return None,
    })
}

/// `AB:cd:01` → bytes; exactly two hex digits per byte, at most 64 bytes (SHA-512).
fn colon_hex(hex: &str) -> Result<Vec<u8>, Reason> {
    let mut out = Vec::with_capacity(32);
    for pair in hex.split(':') {
        if out.len() == 64 {
            return Err("fingerprint is longer than 64 bytes".to_string());
        }
        // Check the digits first: `from_str_radix` alone would accept `+A`.
        let two_hex = pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit());
        let byte = two_hex
            .then(|| u8::from_str_radix(pair, 16).ok())
            .flatten()
            .ok_or_else(|| format!("fingerprint byte `{pair}` is not two hex digits"))?;
        out.push(byte);
    }
    Ok(out)
}

/// `a=candidate:<foundation> <component> <transport> <priority> <addr> <port> typ <type> …`
/// (RFC 8839 §5.1). Every candidate must be well formed; `Ok(None)` means well formed but not
/// usable by the relay (not UDP, not component 1, a hostname, port 0).
pub(crate) fn candidate(value: &str) -> Result<Option<Candidate>, Reason> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [
        foundation,
        component,
        transport,
        priority,
        addr,
        port_text,
        typ_kw,
        typ,
        ..,
    ] = f[..]
    else {
        return Err(
            "candidate needs `<foundation> <component> <transport> <priority> <address> <port> \
             typ <type>`"
                .to_string(),
        );
    };
    if foundation.len() > 32 || !foundation.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "candidate foundation `{foundation}` is not 1-32 characters"
        ));
    }
    let component = number::<u16>(component)
        .filter(|c| (1..=256).contains(c))
        .ok_or_else(|| format!("candidate component `{component}` is not 1-256"))?;
    if !transport.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("candidate transport `{transport}` is not a token"));
    }
    let priority = number::<u32>(priority).filter(|p| *p > 0).ok_or_else(|| {
        format!("candidate priority `{priority}` is not a number from 1 to 2^32-1")
    })?;
    let port = port(port_text)?;
    if typ_kw != "typ" {
        return Err(format!(
            "expected `typ` after the candidate port, found `{typ_kw}`"
        ));
    }
    if !typ.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("candidate type `{typ}` is not a token"));
    }
    // Some stacks bracket IPv6 literals.
    let literal = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let ip = match IpAddr::from_str(literal) {
        Ok(ip) => ip,
        // mDNS (`<uuid>.local`) and FQDN candidates need resolution the relay does not do;
        // scoped IPv6 (`fe80::1%eth0`) is link-local and useless across the Internet.
        Err(_) if is_hostname(addr) || addr.contains('%') => return Ok(None),
        Err(_) => {
            return Err(format!(
                "candidate address `{addr}` is neither an IP nor a hostname"
            ));
        }
    };
    if !transport.eq_ignore_ascii_case("udp") || component != 1 || port == 0 {
        return Ok(None);
    }
    Ok(Some(Candidate {
        foundation: foundation.to_string(),
        component,
        transport: "udp".to_string(),
        priority,
        addr: SocketAddr::new(ip, port),
        typ: typ.to_string(),
    }))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// `a=crypto:<tag> <suite> <key-params> [<session-param> …]` (RFC 4568 §9.1). The suite and
/// the key are judged later, by whoever knows which suites it can use.
pub(crate) fn crypto(value: &str) -> Result<Crypto, Reason> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [tag, suite, key_params, session_params @ ..] = &f[..] else {
        return Err("crypto needs `<tag> <suite> <key-params>`".to_string());
    };
    let tag = number::<u32>(tag)
        .filter(|_| tag.len() <= 9)
        .ok_or_else(|| format!("crypto tag `{tag}` is not a number of 1-9 digits"))?;
    if !suite
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("crypto suite `{suite}` is not a token"));
    }
    if !key_params.starts_with("inline:") {
        return Err("crypto key parameters must use the `inline:` method".to_string());
    }
    Ok(Crypto {
        tag,
        suite: suite.to_string(),
        key_params: key_params.to_string(),
        session_params: session_params.iter().map(|s| s.to_string()).collect(),
    })
}

/// `a=ssrc:<ssrc> <attribute>[:<value>]` (RFC 5576).
pub(crate) fn ssrc(value: &str) -> Result<(u32, String, Option<String>), Reason> {
    let (id, rest) = split_first_word(value).unwrap_or((value, ""));
    let id = number::<u32>(id).ok_or_else(|| format!("ssrc `{id}` is not a 32-bit number"))?;
    let rest = rest.trim();
    let (attr, val) = match rest.split_once(':') {
        Some((a, v)) => (a, Some(v.to_string())),
        None => (rest, None),
    };
    Ok((id, attr.to_string(), val))
}

/// `a=extmap:<id>[/<direction>] <uri> [<attributes>]` (RFC 8285).
pub(crate) fn extmap(value: &str) -> Result<(u16, String), Reason> {
    let (id, rest) = split_first_word(value).ok_or("extmap needs `<id> <uri>`")?;
    let id = id.split('/').next().unwrap_or(id);
    let id = number::<u16>(id)
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("extmap id `{id}` is not a positive number"))?;
    let uri = rest.split_ascii_whitespace().next().unwrap_or("");
    Ok((id, uri.to_string()))
}

/// `a=group:<semantics> <mid> …` → mids of a BUNDLE group, `None` for other semantics.
pub(crate) fn bundle_group(value: &str) -> Option<Vec<String>> {
    let mut f = value.split_ascii_whitespace();
    let semantics = f.next()?;
    semantics
        .eq_ignore_ascii_case("BUNDLE")
        .then(|| f.map(str::to_string).collect())
}

/// `"111 opus/48000/2"` → `("111", " opus/48000/2")`; `None` if there is no second word.
fn split_first_word(value: &str) -> Option<(&str, &str)> {
    let value = value.trim_start();
    let (first, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    (!rest.trim().is_empty()).then_some((first, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_forms() {
        let m = rtpmap("111 opus/48000/2").unwrap();
        assert_eq!(
            (m.pt, m.encoding.as_str(), m.clock_rate, m.channels),
            (111, "opus", 48000, Some(2))
        );
        let m = rtpmap("126 telephone-event/8000").unwrap();
        assert_eq!((m.pt, m.clock_rate, m.channels), (126, 8000, None));
        assert!(rtpmap("128 opus/48000/2").is_err());
        assert!(rtpmap("111 opus").is_err());
        assert!(rtpmap("111 opus/fast/2").is_err());
        assert!(rtpmap("111 opus/48000/2/9").is_err());
        assert!(rtpmap("111").is_err());
    }

    #[test]
    fn fingerprint_lengths_and_hex() {
        let hex32 = vec!["0A"; 32].join(":");
        assert_eq!(
            fingerprint(&format!("SHA-256 {hex32}")).unwrap().algorithm,
            "sha-256"
        );
        assert!(
            fingerprint(&format!("sha-1 {hex32}")).is_err(),
            "sha-1 is 20 bytes"
        );
        assert!(fingerprint("sha-256 0A:0G").is_err());
        assert!(fingerprint("sha-256 0A:0").is_err());
        assert!(fingerprint("sha-256 0A::0B").is_err());
        assert!(fingerprint("sha-256 +A:0B").is_err());
        assert!(fingerprint("sha-256").is_err());
        let long = vec!["00"; 65].join(":");
        assert!(fingerprint(&format!("x-hash {long}")).is_err());
    }

    #[test]
    fn candidate_kinds() {
        let c = candidate("1 1 udp 2122260223 192.0.2.1 3480 typ host generation 0")
            .unwrap()
            .unwrap();
        assert_eq!(c.addr, "192.0.2.1:3480".parse::<SocketAddr>().unwrap());
        let c = candidate("2 1 UDP 2122262783 2001:db8::1 3480 typ host")
            .unwrap()
            .unwrap();
        assert_eq!(c.addr, "[2001:db8::1]:3480".parse::<SocketAddr>().unwrap());
        assert_eq!(c.transport, "udp");
        // Kept out, not errors.
        assert_eq!(
            candidate("3 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active").unwrap(),
            None
        );
        assert_eq!(
            candidate("4 2 udp 2122260222 192.0.2.1 3481 typ host").unwrap(),
            None
        );
        assert_eq!(
            candidate(
                "5 1 udp 2122260223 0f3c7e52-1c3b-4f06-9a8e-5b4b6a7e1d2f.local 5000 typ host"
            )
            .unwrap(),
            None
        );
        assert_eq!(
            candidate("6 1 udp 2122260223 media.example.com 5000 typ host").unwrap(),
            None
        );
        // Errors.
        assert!(candidate("1 1 udp 21x2260223 192.0.2.1 3480 typ host").is_err());
        assert!(candidate("1 1 udp 99999999999 192.0.2.1 3480 typ host").is_err());
        assert!(candidate("1 1 udp 1 192.0.2.1 70000 typ host").is_err());
        assert!(candidate("1 1 udp 1 192.0.2.1 3480 type host").is_err());
        assert!(candidate("1 1 udp 1 192.0.2.1 3480 typ").is_err());
        assert!(candidate("1 1 udp 1 <script> 3480 typ host").is_err());
    }

    #[test]
    fn crypto_forms() {
        let c = crypto("1 AES_CM_128_HMAC_SHA1_80 inline:abc|2^31 WSH=64").unwrap();
        assert_eq!(
            (c.tag, c.suite.as_str(), c.key_params.as_str()),
            (1, "AES_CM_128_HMAC_SHA1_80", "inline:abc|2^31")
        );
        assert_eq!(c.session_params, vec!["WSH=64".to_string()]);
        assert!(crypto("x AES_CM_128_HMAC_SHA1_80 inline:abc").is_err());
        assert!(crypto("1234567890 AES_CM_128_HMAC_SHA1_80 inline:abc").is_err());
        assert!(crypto("1 AES_CM_128_HMAC_SHA1_80 uri:abc").is_err());
        assert!(crypto("1 AES_CM_128_HMAC_SHA1_80").is_err());
    }

    #[test]
    fn connection_forms() {
        assert_eq!(
            connection("IN IP4 192.0.2.1").unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            connection("IN IP6 2001:db8::2").unwrap(),
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            connection("IN IP4 233.252.0.1/127").unwrap(),
            "233.252.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(connection("IN IP4 media.example.com").is_err());
        assert!(connection("ATM NSAP 47.0005").is_err());
        assert!(connection("IN IP4").is_err());
    }

    #[test]
    fn numbers_are_plain_digits() {
        assert_eq!(number::<u16>("+5"), None);
        assert_eq!(number::<u16>("65536"), None);
        assert_eq!(number::<u16>(""), None);
        assert_eq!(number::<u16>("٣"), None, "non-ASCII digits");
        assert_eq!(number::<u16>("0080"), Some(80));
    }
}
