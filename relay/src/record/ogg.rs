//! Ogg Opus writing (RFC 7845 over RFC 3533 framing). Pure: bytes in, bytes out, no I/O.
//!
//! One [`OggOpusWriter`] is one logical bitstream: an `OpusHead` page, an `OpusTags` page, then
//! audio pages. The granule position of an audio page is the number of 48 kHz samples decoded
//! up to the end of the last packet completed on it (RFC 7845 §4), so it must equal the sum of
//! the packet durations written so far. Holes in the audio (packet loss, DTX, a paused
//! recording, the seconds between two agents) are therefore not skipped: [`write_gap`] emits
//! packets whose frames are zero bytes long, which a decoder treats as lost and conceals
//! (RFC 7845 §4.1 "Repairing Gaps in Real-time Streams", RFC 6716 §3.2.1). Players then show
//! the true wall-clock duration.
//!
//! Every packet is checked for a parsable TOC (RFC 6716 §3.1) before it is framed: a malformed
//! one is refused with an error rather than written, so one bad datagram never makes the file
//! undecodable. Nothing here panics on any input.
//!
//! [`write_gap`]: OggOpusWriter::write_gap

/// Opus always counts time at 48 kHz in Ogg (RFC 7845 §4) and in RTP (RFC 7587 §4.1).
pub const SAMPLE_RATE: u32 = 48_000;
/// The longest an Opus packet may last (RFC 6716 §3.2.5): 120 ms.
pub const MAX_PACKET_SAMPLES: u32 = 5760;
/// The gap-repair granularity: the shortest Opus frame, 2.5 ms.
pub const GAP_QUANTUM: u64 = 120;
/// A page is closed once it holds this much audio (RFC 7845 §6 suggests about a second) or
/// [`PAGE_TARGET_BYTES`], so a crash loses at most about a second, and a seek stays cheap.
pub const PAGE_TARGET_SAMPLES: u64 = SAMPLE_RATE as u64;
/// 2 KiB: half a second of 32 kbit/s voice. The open page is what each recorded track keeps in
/// memory, so this is per recording (4 KiB cost 4 KiB more per recorded call); each page adds
/// 27 bytes and a lacing byte per packet, about 2 % here.
pub const PAGE_TARGET_BYTES: usize = 2048;
/// Samples a decoder discards at the start (RFC 7845 §4.2). The recording starts mid-stream,
/// so the decoder has no history; §4.2 recommends at least 80 ms of pre-roll for such cropped
/// streams. The writer covers it with a concealment lead-in (see [`OggOpusWriter::new`]).
pub const PRE_SKIP: u64 = 3840;
/// The largest packet this writer frames: one page's worth of lacing (255 × 255 − 1).
pub const MAX_PACKET_BYTES: usize = 255 * 255 - 1;

const HEADER_TYPE_CONTINUED: u8 = 0x01;
const HEADER_TYPE_BOS: u8 = 0x02;
const HEADER_TYPE_EOS: u8 = 0x04;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OggError {
    #[error("empty Opus packet")]
    Empty,
    #[error("Opus packet has an invalid TOC or frame count")]
    BadToc,
    #[error("Opus packet longer than {MAX_PACKET_BYTES} bytes")]
    TooLong,
    #[error("the stream is finished")]
    Finished,
}

/// Samples (at 48 kHz) per frame for a TOC config number (RFC 6716 §3.1, Table 2).
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// The duration of one Opus packet in 48 kHz samples, from its TOC byte (and frame count byte
/// for code 3), or an error if the packet cannot be a valid Opus packet (RFC 6716 §3.1–3.2).
pub fn packet_samples(packet: &[u8]) -> Result<u32, OggError> {
    let &toc = packet.first().ok_or(OggError::Empty)?;
    let per_frame = frame_samples(toc >> 3);
    let frames = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let &count = packet.get(1).ok_or(OggError::BadToc)?;
            u32::from(count & 0x3F)
        }
    };
    let total = per_frame * frames;
    if frames == 0 || total > MAX_PACKET_SAMPLES {
        return Err(OggError::BadToc);
    }
    Ok(total)
}

/// RFC 3533 §6 CRC: polynomial 0x04c11db7, initial value 0, no reflection, no final xor.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut j = 0;
        while j < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            j += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

pub fn crc32(data: &[u8]) -> u32 {
    // Slicing by 8: eight bytes per step through eight tables, a quarter of the instructions
    // of a byte at a time (the writer thread's largest cost, see BENCHMARKS.md).
    let mut crc = 0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let t = &CRC_TABLES;
        let x = crc ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(x >> 24) as usize]
            ^ t[6][((x >> 16) & 0xff) as usize]
            ^ t[5][((x >> 8) & 0xff) as usize]
            ^ t[4][(x & 0xff) as usize]
            ^ t[3][usize::from(c[4])]
            ^ t[2][usize::from(c[5])]
            ^ t[1][usize::from(c[6])]
            ^ t[0][usize::from(c[7])];
    }
    chunks.remainder().iter().fold(crc, crc_byte)
}

fn crc_byte(crc: u32, b: &u8) -> u32 {
    (crc << 8) ^ CRC_TABLE[usize::from(((crc >> 24) as u8) ^ b)]
}

/// `CRC_TABLES[k][i]`: the CRC of byte `i` followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    t[0] = CRC_TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ CRC_TABLE[(prev >> 24) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// One logical Ogg Opus bitstream being written. Output goes into a caller's `Vec<u8>` (the
/// writer thread hands it to the file); the only buffer kept here is the open page.
pub struct OggOpusWriter {
    serial: u32,
    page_seq: u32,
    /// Samples of every packet completed so far (the granule of the last packet).
    granule: u64,
    /// Lacing values and body of the page being filled.
    lacing: Vec<u8>,
    body: Vec<u8>,
    page_samples: u64,
    /// The last real packet's TOC byte: gap packets copy its mode, bandwidth and channels.
    last_toc: Option<u8>,
    finished: bool,
    packets: u64,
    gap_packets: u64,
}

impl OggOpusWriter {
    /// A new stream; `out` receives the two header pages (RFC 7845 §5). `tags` become user
    /// comments (`KEY=value`) in `OpusTags`.
    pub fn new(serial: u32, vendor: &str, tags: &[(&str, &str)], out: &mut Vec<u8>) -> Self {
        let mut w = OggOpusWriter {
            serial,
            page_seq: 0,
            granule: 0,
            // A page of voice has 10-50 packets; more grows it (the writer thread, not a shard).
            lacing: Vec::with_capacity(64),
            body: Vec::with_capacity(PAGE_TARGET_BYTES),
            page_samples: 0,
            last_toc: None,
            finished: false,
            packets: 0,
            gap_packets: 0,
        };
        // ID header (§5.1): version 1, mono output, pre-skip, 48 kHz input, gain 0, family 0.
        let mut head = [0u8; 19];
        head[..8].copy_from_slice(b"OpusHead");
        head[8] = 1;
        head[9] = 1;
        head[10..12].copy_from_slice(&(PRE_SKIP as u16).to_le_bytes());
        head[12..16].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
        w.emit_page(HEADER_TYPE_BOS, 0, &[&head], out);
        // Comment header (§5.2), alone on its own page(s).
        let mut tags_pkt = Vec::with_capacity(64);
        tags_pkt.extend_from_slice(b"OpusTags");
        push_string(&mut tags_pkt, vendor.as_bytes());
        tags_pkt.extend_from_slice(&(tags.len() as u32).to_le_bytes());
        for (k, v) in tags {
            let mut c = Vec::with_capacity(k.len() + v.len() + 1);
            c.extend_from_slice(k.as_bytes());
            c.push(b'=');
            c.extend_from_slice(v.as_bytes());
            push_string(&mut tags_pkt, &c);
        }
        // Tags longer than one page's lacing are truncated to the vendor string: metadata must
        // never stop a recording.
        if tags_pkt.len() > MAX_PACKET_BYTES {
            tags_pkt.truncate(8);
            push_string(&mut tags_pkt, vendor.as_bytes());
            tags_pkt.extend_from_slice(&0u32.to_le_bytes());
        }
        w.emit_page(0, 0, &[&tags_pkt], out);
        // The pre-skip is covered by a concealment lead-in, so position 0 of the audio is the
        // first recorded packet and the playback length is exactly what was recorded.
        w.write_gap(PRE_SKIP, out);
        w.gap_packets = 0;
        w
    }

    /// The granule position so far (pre-skip included).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Where the next packet starts in the audio, in samples (pre-skip excluded): the
    /// recording's time axis.
    pub fn position(&self) -> u64 {
        self.granule.saturating_sub(PRE_SKIP)
    }

    /// Packets written: (real, synthesised for gaps).
    pub fn packet_counts(&self) -> (u64, u64) {
        (self.packets, self.gap_packets)
    }

    /// Append one Opus packet. A page goes to `out` when the open one is full. Returns the
    /// packet's duration in samples.
    pub fn write_packet(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<u32, OggError> {
        if self.finished {
            return Err(OggError::Finished);
        }
        if packet.len() > MAX_PACKET_BYTES {
            return Err(OggError::TooLong);
        }
        let samples = packet_samples(packet)?;
        self.append(packet, samples, out);
        self.last_toc = packet.first().copied();
        self.packets += 1;
        Ok(samples)
    }

    /// Cover `samples` of silence with zero-length frames (PLC), rounded down to 2.5 ms.
    /// Returns the samples actually covered.
    pub fn write_gap(&mut self, samples: u64, out: &mut Vec<u8>) -> u64 {
        if self.finished {
            return 0;
        }
        let mut left = samples - samples % GAP_QUANTUM;
        let covered = left;
        // Mode, bandwidth and frame size of the previous packet where possible (§4.1: it
        // helps the decoder's concealment); a CELT 20 ms fullband frame before any audio.
        let toc = self.last_toc.unwrap_or(31 << 3);
        let stereo = toc & 0x04;
        let config = toc >> 3;
        let per_frame = u64::from(frame_samples(config));
        while left >= per_frame {
            let frames = (left / per_frame).min(u64::from(MAX_PACKET_SAMPLES) / per_frame);
            // Code 3, CBR, no padding: M frames of (total 0 bytes / M) = 0 bytes each.
            let pkt = [(config << 3) | stereo | 0x3, frames as u8];
            self.append(&pkt, (frames * per_frame) as u32, out);
            self.gap_packets += 1;
            left -= frames * per_frame;
        }
        if left > 0 {
            // The rest in 2.5 ms CELT frames of the nearest CELT bandwidth (CELT has no
            // mediumband: it maps to wideband).
            let bw = celt_bandwidth_base(config);
            let frames = left / GAP_QUANTUM; // < per_frame / 120 ≤ 24
            let pkt = [(bw << 3) | stereo | 0x3, frames as u8];
            self.append(&pkt, (frames * GAP_QUANTUM) as u32, out);
            self.gap_packets += 1;
        }
        covered
    }

    /// Close the stream: the open page goes out with the end-of-stream flag (an empty EOS page
    /// if no audio was ever written).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flush_page(HEADER_TYPE_EOS, out);
    }

    fn append(&mut self, packet: &[u8], samples: u32, out: &mut Vec<u8>) {
        let segments = packet.len() / 255 + 1;
        // Close the open page first if this packet would overflow it or it is long enough;
        // flushing before (never after) keeps a packet in the page for `finish`'s EOS flag.
        if !self.lacing.is_empty()
            && (self.lacing.len() + segments > 255
                || self.page_samples >= PAGE_TARGET_SAMPLES
                || self.body.len() + packet.len() > PAGE_TARGET_BYTES)
        {
            self.flush_page(0, out);
        }
        for _ in 0..segments - 1 {
            self.lacing.push(255);
        }
        self.lacing.push((packet.len() % 255) as u8);
        self.body.extend_from_slice(packet);
        self.granule += u64::from(samples);
        self.page_samples += u64::from(samples);
    }

    fn flush_page(&mut self, flags: u8, out: &mut Vec<u8>) {
        let start = out.len();
        write_page_header(
            out,
            flags,
            self.granule,
            self.serial,
            self.page_seq,
            &self.lacing,
        );
        out.extend_from_slice(&self.body);
        finish_crc(&mut out[start..]);
        self.page_seq = self.page_seq.wrapping_add(1);
        self.lacing.clear();
        self.body.clear();
        self.page_samples = 0;
    }

    /// A page holding whole packets (headers only: their lacing is computed here).
    fn emit_page(&mut self, flags: u8, granule: u64, packets: &[&[u8]], out: &mut Vec<u8>) {
        let mut lacing = Vec::with_capacity(8);
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        let start = out.len();
        write_page_header(out, flags, granule, self.serial, self.page_seq, &lacing);
        for p in packets {
            out.extend_from_slice(p);
        }
        finish_crc(&mut out[start..]);
        self.page_seq = self.page_seq.wrapping_add(1);
    }
}

/// The CELT config number of the 2.5 ms frame with the bandwidth closest to `config`'s.
fn celt_bandwidth_base(config: u8) -> u8 {
    let bw = match config {
        0..=3 => 0,   // SILK NB
        4..=11 => 1,  // SILK MB, WB → CELT WB
        12..=13 => 2, // hybrid SWB
        14..=15 => 3, // hybrid FB
        _ => (config - 16) / 4,
    };
    16 + bw * 4
}

fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// RFC 3533 §6 page header; the CRC field is left zero for [`finish_crc`].
fn write_page_header(
    out: &mut Vec<u8>,
    flags: u8,
    granule: u64,
    serial: u32,
    seq: u32,
    lacing: &[u8],
) {
    out.extend_from_slice(b"OggS");
    out.push(0);
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(lacing.len() as u8);
    out.extend_from_slice(lacing);
}

fn finish_crc(page: &mut [u8]) {
    let crc = crc32(page);
    if let Some(field) = page.get_mut(22..26) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// One page read back by [`parse_pages`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub flags: u8,
    pub granule: u64,
    pub serial: u32,
    pub seq: u32,
    /// Packets completed on this page (a packet continued from the previous page is joined).
    pub packets: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("page at byte {0} does not start with OggS")]
    Capture(usize),
    #[error("page at byte {0} is truncated")]
    Truncated(usize),
    #[error("page at byte {0} has a bad CRC")]
    Crc(usize),
}

/// Read a whole Ogg file back into pages, checking capture patterns and CRCs. For tests and
/// for operators' tooling (`relay` does not read recordings itself).
pub fn parse_pages(data: &[u8]) -> Result<Vec<Page>, ParseError> {
    let mut pages = Vec::new();
    let mut at = 0;
    let mut partial: Vec<u8> = Vec::new();
    while at < data.len() {
        let hdr = data.get(at..at + 27).ok_or(ParseError::Truncated(at))?;
        if &hdr[..4] != b"OggS" {
            return Err(ParseError::Capture(at));
        }
        let nseg = usize::from(hdr[26]);
        let lacing = data
            .get(at + 27..at + 27 + nseg)
            .ok_or(ParseError::Truncated(at))?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = at + 27 + nseg + body_len;
        let page = data.get(at..end).ok_or(ParseError::Truncated(at))?;
        let mut zeroed = page.to_vec();
        zeroed[22..26].fill(0);
        let crc = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
        if crc32(&zeroed) != crc {
            return Err(ParseError::Crc(at));
        }
        let flags = hdr[5];
        if flags & HEADER_TYPE_CONTINUED == 0 {
            partial.clear();
        }
        let mut packets = Vec::new();
        let mut off = at + 27 + nseg;
        for &l in lacing {
            partial.extend_from_slice(&data[off..off + usize::from(l)]);
            off += usize::from(l);
            if l < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&hdr[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        pages.push(Page {
            flags,
            granule: u64_at(6),
            serial: u32_at(14),
            seq: u32_at(18),
            packets,
        });
        at = end;
    }
    Ok(pages)
}

/// What a reader of a finished single-stream Ogg Opus file would report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub pre_skip: u16,
    pub channels: u8,
    /// Audio packets (real and gap) and the final granule position.
    pub packets: usize,
    pub final_granule: u64,
    /// Sum of all audio packets' durations.
    pub summed_samples: u64,
    pub tags: Vec<String>,
    pub eos: bool,
}

impl Summary {
    pub fn duration_secs(&self) -> f64 {
        self.final_granule.saturating_sub(u64::from(self.pre_skip)) as f64 / f64::from(SAMPLE_RATE)
    }
}

/// Parse and check a single-stream Ogg Opus file: headers first, granules consistent with
/// packet durations on every page.
pub fn summarize(data: &[u8]) -> Result<Summary, String> {
    let pages = parse_pages(data).map_err(|e| e.to_string())?;
    let head = pages
        .first()
        .and_then(|p| p.packets.first())
        .filter(|p| p.len() >= 19 && p.starts_with(b"OpusHead"))
        .ok_or("first packet is not OpusHead")?;
    let tags_pkt = pages
        .get(1)
        .and_then(|p| p.packets.first())
        .filter(|p| p.starts_with(b"OpusTags"))
        .ok_or("second packet is not OpusTags")?;
    let mut tags = Vec::new();
    let mut at = 8;
    let read_u32 = |b: &[u8], at: usize| -> Option<usize> {
        let s = b.get(at..at + 4)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let vlen = read_u32(tags_pkt, at).ok_or("bad OpusTags")?;
    at += 4 + vlen;
    let n = read_u32(tags_pkt, at).ok_or("bad OpusTags")?;
    at += 4;
    for _ in 0..n {
        let l = read_u32(tags_pkt, at).ok_or("bad OpusTags")?;
        let s = tags_pkt.get(at + 4..at + 4 + l).ok_or("bad OpusTags")?;
        tags.push(String::from_utf8_lossy(s).into_owned());
        at += 4 + l;
    }
    let mut summed = 0u64;
    let mut packets = 0;
    for (i, page) in pages.iter().enumerate().skip(2) {
        for p in &page.packets {
            summed += u64::from(packet_samples(p).map_err(|e| format!("page {i}: {e}"))?);
            packets += 1;
        }
        if !page.packets.is_empty() && page.granule != summed {
            return Err(format!(
                "page {i}: granule {} but packets sum to {summed}",
                page.granule
            ));
        }
    }
    let last = pages.last().ok_or("no pages")?;
    Ok(Summary {
        pre_skip: u16::from_le_bytes([head[10], head[11]]),
        channels: head[9],
        packets,
        final_granule: last.granule,
        summed_samples: summed,
        tags,
        eos: last.flags & HEADER_TYPE_EOS != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20 ms CELT fullband mono packet (config 31, code 0).
    fn pkt20(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 31 << 3;
        p
    }

    #[test]
    fn crc_matches_the_ogg_reference_value() {
        // The catalogue's CRC-32/CKSUM check value (same polynomial and init, but a final
        // xor with 0xffffffff) is 0x765e7680; Ogg has no final xor.
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
        // Slicing by 8 agrees with a byte at a time, at every length and alignment.
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(crc32(d), d.iter().fold(0, crc_byte), "{start}..{end}");
            }
        }
    }

    #[test]
    fn packet_durations_follow_the_toc() {
        assert_eq!(packet_samples(&[31 << 3]), Ok(960)); // CELT 20 ms
        assert_eq!(packet_samples(&[1 << 3]), Ok(960)); // SILK NB 20 ms
        assert_eq!(packet_samples(&[3 << 3]), Ok(2880)); // SILK 60 ms
        assert_eq!(packet_samples(&[(3 << 3) | 1, 0, 0]), Ok(5760)); // 2 × 60 ms
        assert_eq!(packet_samples(&[(16 << 3) | 3, 48]), Ok(5760)); // 48 × 2.5 ms
        assert_eq!(packet_samples(&[(16 << 3) | 3, 49]), Err(OggError::BadToc));
        assert_eq!(packet_samples(&[(31 << 3) | 3, 0]), Err(OggError::BadToc));
        assert_eq!(packet_samples(&[(31 << 3) | 3]), Err(OggError::BadToc));
        assert_eq!(packet_samples(&[]), Err(OggError::Empty));
    }

    #[test]
    fn headers_then_audio_read_back_with_consistent_granules() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(7, "relay", &[("CALL_ID", "c1")], &mut out);
        for _ in 0..200 {
            w.write_packet(&pkt20(80), &mut out).unwrap();
        }
        w.finish(&mut out);
        let s = summarize(&out).unwrap();
        assert_eq!(s.packets, 201, "the pre-skip lead-in, then the audio");
        assert_eq!(s.final_granule, PRE_SKIP + 200 * 960);
        assert!((s.duration_secs() - 4.0).abs() < 1e-9);
        assert_eq!(s.tags, vec!["CALL_ID=c1".to_string()]);
        assert!(s.eos);
        let pages = parse_pages(&out).unwrap();
        assert_eq!(pages[0].flags, HEADER_TYPE_BOS);
        assert_eq!(pages[0].granule, 0);
        assert!(pages.iter().enumerate().all(|(i, p)| p.seq == i as u32));
        // A page per 2 KiB: 25 of these 80-byte packets (half a second).
        assert!(
            pages.len() >= 2 + 7 && pages.len() <= 2 + 9,
            "{}",
            pages.len()
        );
    }

    #[test]
    fn gaps_are_covered_by_plc_packets_in_the_previous_mode() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        w.write_packet(&[1 << 3, 1, 2], &mut out).unwrap(); // SILK NB 20 ms
        // 1 s + 50 ms gap: whole 20 ms frames, then 2.5 ms CELT frames for the remainder.
        assert_eq!(w.write_gap(48_000 + 2400 + 100, &mut out), 48_000 + 2400);
        w.finish(&mut out);
        let s = summarize(&out).unwrap();
        assert_eq!(s.final_granule, PRE_SKIP + 960 + 48_000 + 2400);
        let pages = parse_pages(&out).unwrap();
        let audio: Vec<&Vec<u8>> = pages
            .iter()
            .skip(2)
            .flat_map(|p| &p.packets)
            .skip(1)
            .collect();
        // 52 whole 20 ms frames (8 packets of 6, one of 4), then 4 × 2.5 ms.
        assert_eq!(audio[1], &vec![(1 << 3) | 3, 6]);
        let last = audio.last().unwrap();
        assert_eq!(last[0] >> 3, 16, "2.5 ms CELT narrowband for the remainder");
        assert_eq!(packet_samples(last), Ok(480));
        assert_eq!(w.packet_counts(), (1, audio.len() as u64 - 1));
    }

    #[test]
    fn a_gap_before_any_audio_is_celt_fullband() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        w.write_gap(960 * 3, &mut out);
        w.finish(&mut out);
        let pages = parse_pages(&out).unwrap();
        // The lead-in (80 ms: 4 frames), then the gap (3 frames).
        assert_eq!(
            pages[2].packets,
            vec![vec![(31 << 3) | 3, 4], vec![(31 << 3) | 3, 3]]
        );
    }

    #[test]
    fn long_packets_are_laced_and_bad_ones_refused() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        w.write_packet(&pkt20(255), &mut out).unwrap();
        w.write_packet(&pkt20(1000), &mut out).unwrap();
        assert_eq!(w.write_packet(&[], &mut out), Err(OggError::Empty));
        assert_eq!(
            w.write_packet(&vec![0; MAX_PACKET_BYTES + 1], &mut out),
            Err(OggError::TooLong)
        );
        w.finish(&mut out);
        assert_eq!(
            w.write_packet(&pkt20(10), &mut out),
            Err(OggError::Finished)
        );
        let pages = parse_pages(&out).unwrap();
        let audio: Vec<usize> = pages
            .iter()
            .skip(2)
            .flat_map(|p| p.packets.iter().map(Vec::len))
            .collect();
        assert_eq!(audio, vec![2, 255, 1000]);
    }

    #[test]
    fn a_stream_without_audio_still_ends() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        w.finish(&mut out);
        w.finish(&mut out);
        let s = summarize(&out).unwrap();
        assert_eq!((s.packets, s.final_granule, s.eos), (1, PRE_SKIP, true));
        assert_eq!(s.duration_secs(), 0.0);
    }

    #[test]
    fn corrupt_files_are_reported_not_panicked_on() {
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        w.write_packet(&pkt20(50), &mut out).unwrap();
        w.finish(&mut out);
        let mut bad = out.clone();
        bad[40] ^= 1;
        assert!(parse_pages(&bad).is_err());
        for cut in 0..out.len() {
            let _ = parse_pages(&out[..cut]);
            let _ = summarize(&out[..cut]);
        }
    }

    #[test]
    fn arbitrary_packets_never_panic() {
        // A small deterministic fuzz: every 1- and 2-byte packet, and random longer ones.
        let mut out = Vec::new();
        let mut w = OggOpusWriter::new(1, "relay", &[], &mut out);
        for a in 0..=255u8 {
            let _ = packet_samples(&[a]);
            for b in 0..=255u8 {
                let _ = w.write_packet(&[a, b], &mut out);
            }
            w.write_gap(u64::from(a) * 97, &mut out);
        }
        w.finish(&mut out);
        let s = summarize(&out).unwrap();
        assert_eq!(s.final_granule, s.summed_samples);
    }
}
