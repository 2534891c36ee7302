//! The document walker: splits lines, enforces the size limits and the order rules, and
//! routes each line to the session level, the active `m=audio` section, or nowhere (sections
//! with port 0, which are disabled streams).

use std::net::IpAddr;

use super::error::SdpError;
use super::fields;
use super::model::{
    AudioMedia, Direction, Fingerprint, LineNumbers, MediaSection, Origin, SessionDescription,
    Setup,
};

/// Documents larger than this are refused before any parsing. Real offers are 1–3 KiB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Lines longer than this are refused. The longest legitimate lines (a SHA-512 fingerprint,
/// a long fmtp) are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// More m-sections than this are refused (browsers with many transceivers stay far below).
const MAX_SECTIONS: usize = 64;

/// Parse a session description with exactly one active `m=audio` section.
///
/// Tolerant of what real peers send: LF or CRLF, trailing whitespace, blank lines, a UTF-8
/// BOM, unknown attributes and line types (ignored), extmap or not, disabled (port 0) m-lines.
/// Strict about what the relay would misuse: malformed values of the attributes it reads,
/// more than one active stream, non-audio streams, unknown transports, and oversized input.
/// Cost is linear in the input, which is bounded by [`MAX_SDP_BYTES`].
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    parse_with(text, false)
}

/// [`parse`] for a browser's description (a WebRTC internal leg): active sections other than
/// the first `m=audio` (video, a data channel, a second audio transceiver) are recorded in
/// [`SessionDescription::sections`] and otherwise skipped, so that our answer can reject them
/// with port 0 instead of refusing the whole offer.
pub fn parse_webrtc(text: &str) -> Result<SessionDescription, SdpError> {
    parse_with(text, true)
}

fn parse_with(text: &str, skip_other_media: bool) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::document(format!(
            "document is {} bytes, the limit is {MAX_SDP_BYTES}",
            text.len()
        )));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut walker = Walker {
        skip_other_media,
        ..Walker::default()
    };
    for (index, raw) in text.split('\n').enumerate() {
        let no = index + 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(SdpError::at(
                no,
                raw,
                format!("line is {} bytes, the limit is {MAX_LINE_BYTES}", raw.len()),
            ));
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        walker.line(Line::split(no, line)?)?;
    }
    walker.finish()
}

/// Parse raw bytes (a webhook body, a SIP message part). Invalid UTF-8 is an error naming the
/// line that holds the first bad byte.
pub fn parse_bytes(bytes: &[u8]) -> Result<SessionDescription, SdpError> {
    if bytes.len() > MAX_SDP_BYTES {
        return Err(SdpError::document(format!(
            "document is {} bytes, the limit is {MAX_SDP_BYTES}",
            bytes.len()
        )));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let no = 1 + good.iter().filter(|b| **b == b'\n').count();
            let rest = bytes.get(line_start..).unwrap_or_default();
            let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = line
                .get(..MAX_LINE_BYTES.min(line.len()))
                .unwrap_or_default();
            Err(SdpError::at(
                no,
                &String::from_utf8_lossy(line),
                "line is not valid UTF-8",
            ))
        }
    }
}

/// One non-blank line: `<type>=<value>`.
struct Line<'a> {
    no: usize,
    text: &'a str,
    kind: u8,
    value: &'a str,
}

impl<'a> Line<'a> {
    fn split(no: usize, text: &'a str) -> Result<Line<'a>, SdpError> {
        if text.contains('\r') {
            return Err(SdpError::at(no, text, "carriage return inside a line"));
        }
        if text.contains('\0') {
            return Err(SdpError::at(no, text, "NUL character in line"));
        }
        let kind = match text.as_bytes() {
            [k, b'=', ..] if k.is_ascii_lowercase() => *k,
            _ => {
                return Err(SdpError::at(no, text, "not a `<letter>=<value>` line"));
            }
        };
        // The first two bytes are ASCII, so index 2 is a character boundary.
        let value = text.get(2..).unwrap_or_default();
        Ok(Line {
            no,
            text,
            kind,
            value,
        })
    }

    fn err(&self, reason: impl Into<String>) -> SdpError {
        SdpError::at(self.no, self.text, reason)
    }

    /// `a=name[:value]` → (name, value).
    fn attribute(&self) -> (&'a str, Option<&'a str>) {
        match self.value.split_once(':') {
            Some((name, value)) => (name, Some(value.trim())),
            None => (self.value, None),
        }
    }
}

/// Which section the lines currently belong to.
#[derive(Default, PartialEq, Eq)]
enum Section {
    #[default]
    Session,
    /// The active `m=audio`.
    Audio,
    /// A disabled (port 0) m-section: its lines are not ours to judge.
    Disabled,
}

/// Values that can appear at the session and the media level.
#[derive(Default)]
struct Shared {
    connection: Option<IpAddr>,
    ice_ufrag: Option<String>,
    ice_pwd: Option<String>,
    /// Every fingerprint with its line; RFC 8122 allows one per hash function.
    fingerprints: Vec<(Fingerprint, usize)>,
    setup: Option<(Setup, usize)>,
    direction: Option<Direction>,
    end_of_candidates: bool,
}

impl Shared {
    /// Handle a line that may appear at either level. `Ok(false)` if it is not one of those.
    fn line(&mut self, line: &Line<'_>) -> Result<bool, SdpError> {
        if line.kind == b'c' {
            if self.connection.is_some() {
                return Err(line.err("second c= line in the same section"));
            }
            self.connection = Some(fields::connection(line.value).map_err(|r| line.err(r))?);
            return Ok(true);
        }
        if line.kind != b'a' {
            return Ok(false);
        }
        let (name, value) = line.attribute();
        let value = value.unwrap_or("");
        match name {
            "ice-ufrag" => set_once(
                &mut self.ice_ufrag,
                fields::ice_credential("ice-ufrag", value, 4).map_err(|r| line.err(r))?,
                line,
            )?,
            "ice-pwd" => set_once(
                &mut self.ice_pwd,
                fields::ice_credential("ice-pwd", value, 22).map_err(|r| line.err(r))?,
                line,
            )?,
            "fingerprint" => {
                let fp = fields::fingerprint(value).map_err(|r| line.err(r))?;
                self.fingerprints.push((fp, line.no));
            }
            "setup" => {
                let setup = Setup::from_token(value)
                    .ok_or_else(|| line.err(format!("unknown a=setup role `{value}`")))?;
                set_once(&mut self.setup, (setup, line.no), line)?;
            }
            "sendrecv" | "sendonly" | "recvonly" | "inactive" => {
                let dir = Direction::from_token(name).unwrap_or_default();
                set_once(&mut self.direction, dir, line)?;
            }
            "end-of-candidates" => self.end_of_candidates = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// SHA-256 if offered (the only one the relay checks), else the first one given, so that
    /// validation can say "sha-1 only" and name its line.
    fn chosen_fingerprint(&self) -> Option<&(Fingerprint, usize)> {
        self.fingerprints
            .iter()
            .find(|(fp, _)| fp.is_sha256())
            .or(self.fingerprints.first())
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, line: &Line<'_>) -> Result<(), SdpError> {
    if slot.is_some() {
        let what = line.attribute().0;
        return Err(line.err(format!("a={what} given twice in the same section")));
    }
    *slot = Some(value);
    Ok(())
}

#[derive(Default)]
struct Walker {
    seen_version: bool,
    origin: Option<Origin>,
    session_name: Option<String>,
    ice_lite: bool,
    bundle: Vec<String>,
    session: Shared,
    section: Section,
    /// The active audio section, its shared-level values and its `m=` line number.
    audio: Option<(AudioMedia, Shared, usize)>,
    crypto_lines: Vec<usize>,
    /// Every m-section seen so far.
    sections: Vec<MediaSection>,
    /// Browser mode: other active sections are skipped, not refused (see [`parse_webrtc`]).
    skip_other_media: bool,
}

impl Walker {
    fn line(&mut self, line: Line<'_>) -> Result<(), SdpError> {
        if !self.seen_version {
            if line.kind != b'v' {
                return Err(line.err("a session description must start with v=0"));
            }
            if line.value != "0" {
                return Err(line.err("only SDP version 0 exists"));
            }
            self.seen_version = true;
            return Ok(());
        }
        match line.kind {
            b'v' => Err(line.err("second v= line")),
            b'm' => self.media(&line),
            _ => match self.section {
                Section::Session => self.session_line(&line),
                Section::Audio => self.audio_line(&line),
                Section::Disabled => {
                    // Keep the mid of sections we do not carry: an answer must name them.
                    if let ("mid", Some(mid)) = line.attribute()
                        && let Some(last) = self.sections.last_mut()
                        && last.mid.is_none()
                    {
                        last.mid = fields::token("mid", mid).ok();
                    }
                    Ok(())
                }
            },
        }
    }

    fn session_line(&mut self, line: &Line<'_>) -> Result<(), SdpError> {
        match line.kind {
            b'o' => {
                let origin = fields::origin(line.value).map_err(|r| line.err(r))?;
                if self.origin.replace(origin).is_some() {
                    return Err(line.err("second o= line"));
                }
            }
            b's' if self.session_name.is_some() => return Err(line.err("second s= line")),
            b's' => self.session_name = Some(line.value.to_string()),
            _ if self.session.line(line)? => {}
            b'a' => match line.attribute() {
                ("ice-lite", _) => self.ice_lite = true,
                ("group", Some(value)) => {
                    if let Some(mids) = fields::bundle_group(value) {
                        self.bundle.extend(mids);
                    }
                }
                // msid-semantic, ice-options, extmap-allow-mixed, and anything unknown.
                _ => {}
            },
            // t=, b=, i=, u=, e=, p=, z=, k=, r= and unknown letters carry nothing we use.
            _ => {}
        }
        Ok(())
    }

    fn media(&mut self, line: &Line<'_>) -> Result<(), SdpError> {
        if self.origin.is_none() {
            return Err(line.err("m= before the o= line"));
        }
        let m = fields::media_line(line.value).map_err(|r| line.err(r))?;
        if self.sections.len() >= MAX_SECTIONS {
            return Err(line.err(format!("more than {MAX_SECTIONS} m= sections")));
        }
        self.sections.push(MediaSection {
            media: m.media.to_string(),
            port: m.port,
            proto: m.proto.to_string(),
            formats: m.formats.iter().map(|f| f.to_string()).collect(),
            mid: None,
            carried: false,
        });
        let other = m.media != "audio" || self.audio.is_some();
        if m.port == 0 || (other && self.skip_other_media) {
            // A disabled stream (rejected, or bundled away), or one a browser offers that we
            // will reject in the answer: nothing to carry.
            self.section = Section::Disabled;
            return Ok(());
        }
        if m.media != "audio" {
            return Err(line.err(format!(
                "active m={} stream: the relay carries one audio stream only",
                m.media
            )));
        }
        if self.audio.is_some() {
            return Err(line.err("second active m=audio: the relay carries one audio stream"));
        }
        let proto = fields::media_proto(m.proto).map_err(|r| line.err(r))?;
        let formats = m
            .formats
            .iter()
            .map(|f| fields::payload_type(f))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|r| line.err(r))?;
        let audio = AudioMedia {
            port: m.port,
            proto,
            formats,
            connection: None,
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            rtcp_fbs: Vec::new(),
            ptime: None,
            maxptime: None,
            mid: None,
            rtcp_mux: false,
            rtcp: None,
            ice_ufrag: None,
            ice_pwd: None,
            candidates: Vec::new(),
            end_of_candidates: false,
            fingerprint: None,
            setup: None,
            crypto: Vec::new(),
            ssrcs: Vec::new(),
            direction: Direction::SendRecv,
            extmaps: Vec::new(),
        };
        self.audio = Some((audio, Shared::default(), line.no));
        self.section = Section::Audio;
        if let Some(last) = self.sections.last_mut() {
            last.carried = true;
        }
        Ok(())
    }

    fn audio_line(&mut self, line: &Line<'_>) -> Result<(), SdpError> {
        let Some((audio, shared, _)) = self.audio.as_mut() else {
            return Ok(());
        };
        if shared.line(line)? || line.kind != b'a' {
            // b=, i=, k= at media level carry nothing we use.
            return Ok(());
        }
        let (name, value) = line.attribute();
        let value = value.unwrap_or("");
        let e = |r: String| line.err(r);
        match name {
            "rtpmap" => {
                let map = fields::rtpmap(value).map_err(e)?;
                if audio.rtpmap(map.pt).is_some() {
                    return Err(line.err(format!("second a=rtpmap for payload type {}", map.pt)));
                }
                audio.rtpmaps.push(map);
            }
            "fmtp" => audio.fmtps.push(fields::fmtp(value).map_err(e)?),
            "rtcp-fb" => audio.rtcp_fbs.push(fields::rtcp_fb(value).map_err(e)?),
            "ptime" => set_once(&mut audio.ptime, fields::millis(value).map_err(e)?, line)?,
            "maxptime" => set_once(&mut audio.maxptime, fields::millis(value).map_err(e)?, line)?,
            "mid" => set_once(
                &mut audio.mid,
                fields::token("mid", value).map_err(e)?,
                line,
            )?,
            "rtcp-mux" => audio.rtcp_mux = true,
            "rtcp" => set_once(&mut audio.rtcp, fields::rtcp(value).map_err(e)?, line)?,
            "candidate" => {
                if let Some(c) = fields::candidate(value).map_err(e)? {
                    audio.candidates.push(c);
                }
            }
            "crypto" => {
                audio.crypto.push(fields::crypto(value).map_err(e)?);
                self.crypto_lines.push(line.no);
            }
            "ssrc" => audio.ssrcs.push(fields::ssrc(value).map_err(e)?),
            "extmap" => audio.extmaps.push(fields::extmap(value).map_err(e)?),
            // msid, rtcp-rsize, ice-options, and anything unknown.
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<SessionDescription, SdpError> {
        if !self.seen_version {
            return Err(SdpError::document("empty document (no v=0 line)"));
        }
        let origin = self
            .origin
            .ok_or_else(|| SdpError::document("missing o= (origin) line"))?;
        let (mut audio, media, audio_line) = self
            .audio
            .ok_or_else(|| SdpError::document("no active m=audio section"))?;
        let session = self.session;
        let mut sections = self.sections;
        if let Some(s) = sections.iter_mut().find(|s| s.carried) {
            s.mid.clone_from(&audio.mid);
        }

        audio.connection = media.connection;
        audio.ice_ufrag = media.ice_ufrag.clone();
        audio.ice_pwd = media.ice_pwd.clone();
        let media_fp = media.chosen_fingerprint();
        audio.fingerprint = media_fp.map(|(fp, _)| fp.clone());
        audio.setup = media.setup.map(|(s, _)| s);
        audio.end_of_candidates = media.end_of_candidates || session.end_of_candidates;
        audio.direction = media.direction.or(session.direction).unwrap_or_default();

        let session_fp = session.chosen_fingerprint();
        let lines = LineNumbers {
            audio: audio_line,
            fingerprint: media_fp.or(session_fp).map_or(0, |(_, no)| *no),
            setup: media.setup.or(session.setup).map_or(0, |(_, no)| no),
            crypto: self.crypto_lines,
        };
        Ok(SessionDescription {
            origin,
            session_name: self.session_name.unwrap_or_default(),
            connection: session.connection,
            ice_lite: self.ice_lite,
            ice_ufrag: session.ice_ufrag.clone(),
            ice_pwd: session.ice_pwd.clone(),
            fingerprint: session_fp.map(|(fp, _)| fp.clone()),
            setup: session.setup.map(|(s, _)| s),
            bundle: self.bundle,
            audio,
            sections,
            lines,
        })
    }
}
