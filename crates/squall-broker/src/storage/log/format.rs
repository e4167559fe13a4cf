//! The on-disk record format (version 1): segment header, record framing, message encoding.
//!
//! `docs/storage-format.md` holds the byte diagram; this file is its implementation. Everything is
//! little-endian. Decoding never panics on any input (the `segment_reader` fuzz target and a
//! proptest feed it arbitrary bytes) and never trusts a length before checking it against what is
//! left.

use std::time::Duration;

use bytes::Bytes;
use squall_core::{Message, MessageId, Subject, Timestamp};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"SQSG";
/// Version of the segment and record layout written by this code.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the segment header: magic, version, flags, base sequence, CRC, reserved.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 24;
/// Record prefix: body length (u32) and CRC32C of the body (u32).
pub(crate) const RECORD_PREFIX: usize = 8;
/// The smallest body: seq, published_at, flags, id/subject lengths, header count, payload length,
/// producer timestamp (a 1-byte id and a 1-byte subject make it 37).
pub(crate) const MIN_BODY: usize = 8 + 8 + 1 + 2 + 2 + 2 + 4 + 8;
/// Hard ceiling on a body length, whatever the configuration: lengths above it are garbage.
pub(crate) const MAX_BODY: usize = 1 << 30;

const FLAG_KEY: u8 = 1;
const FLAG_DELAY: u8 = 2;
const FLAG_TTL: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_KEY | FLAG_DELAY | FLAG_TTL;

/// Why bytes are not a valid segment header or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// Fewer bytes than the structure needs.
    Short,
    /// Wrong magic number.
    Magic,
    /// A version this code does not read.
    Version(u16),
    /// The stored checksum does not match.
    Crc,
    /// A length or flag that cannot be right.
    Invalid(&'static str),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::Short => f.write_str("truncated"),
            FormatError::Magic => f.write_str("bad magic number"),
            FormatError::Version(v) => write!(f, "unsupported format version {v}"),
            FormatError::Crc => f.write_str("checksum mismatch"),
            FormatError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

/// Encodes the header of a segment whose first record has sequence `base`.
pub(crate) fn segment_header(base: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 6..8: flags, zero in version 1.
    h[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    // 20..24: reserved, zero.
    h
}

/// Decodes a segment header, returning its base sequence.
pub(crate) fn parse_segment_header(h: &[u8]) -> Result<u64, FormatError> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err(FormatError::Short);
    }
    if h[0..4] != SEGMENT_MAGIC {
        return Err(FormatError::Magic);
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if crc != crc32c::crc32c(&h[0..16]) {
        return Err(FormatError::Crc);
    }
    Ok(u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// The fixed part of a record every scan needs: where it ends and what it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHead {
    /// Body length (the framed record is `RECORD_PREFIX + body_len` bytes).
    pub body_len: usize,
    /// The CRC32C stored for the body.
    pub crc: u32,
}

impl RecordHead {
    /// Framed length.
    pub fn framed_len(&self) -> usize {
        RECORD_PREFIX + self.body_len
    }
}

/// Reads a record prefix, rejecting lengths outside `MIN_BODY..=max_body`.
pub(crate) fn parse_head(b: &[u8], max_body: usize) -> Result<RecordHead, FormatError> {
    if b.len() < RECORD_PREFIX {
        return Err(FormatError::Short);
    }
    let body_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if !(MIN_BODY..=max_body.min(MAX_BODY)).contains(&body_len) {
        return Err(FormatError::Invalid("record length"));
    }
    Ok(RecordHead {
        body_len,
        crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    })
}

/// Checks the CRC of `body` and returns its sequence and publish time.
pub(crate) fn verify_body(head: &RecordHead, body: &[u8]) -> Result<(u64, u64), FormatError> {
    if body.len() != head.body_len {
        return Err(FormatError::Short);
    }
    if crc32c::crc32c(body) != head.crc {
        return Err(FormatError::Crc);
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let ts = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    Ok((seq, ts))
}

/// Appends the framed record for `msg` to `buf` and returns the framed length. On error `buf` is
/// left as it was.
pub(crate) fn encode_record(
    buf: &mut Vec<u8>,
    seq: u64,
    published_at: Timestamp,
    msg: &Message,
    max_body: usize,
) -> Result<usize, usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_PREFIX]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&published_at.as_nanos().to_le_bytes());
    let mut flags = 0;
    if msg.key().is_some() {
        flags |= FLAG_KEY;
    }
    if msg.delay().is_some() {
        flags |= FLAG_DELAY;
    }
    if msg.ttl().is_some() {
        flags |= FLAG_TTL;
    }
    buf.push(flags);
    // Ids, subjects and keys are at most 256 bytes and header names 128 (validated by
    // squall-core), so the u16 lengths cannot overflow; header values and the payload are bounded
    // by the u32 check below.
    put_str16(buf, msg.id().as_str());
    put_str16(buf, msg.subject().as_str());
    if let Some(k) = msg.key() {
        put_str16(buf, k);
    }
    buf.extend_from_slice(&(msg.headers().len() as u16).to_le_bytes());
    for (name, value) in msg.headers().iter() {
        put_str16(buf, name);
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    let payload = msg.payload();
    let body_so_far = buf.len() - start - RECORD_PREFIX;
    let body_len = body_so_far + 4 + payload.len() + 8 + 24;
    if body_len > max_body.min(MAX_BODY) || payload.len() > u32::MAX as usize {
        buf.truncate(start);
        return Err(body_len);
    }
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&msg.timestamp().as_nanos().to_le_bytes());
    for d in [msg.delay(), msg.ttl()].into_iter().flatten() {
        buf.extend_from_slice(&d.as_secs().to_le_bytes());
        buf.extend_from_slice(&d.subsec_nanos().to_le_bytes());
    }
    let body_len = buf.len() - start - RECORD_PREFIX;
    let crc = crc32c::crc32c(&buf[start + RECORD_PREFIX..]);
    buf[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len() - start)
}

fn put_str16(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedRecord {
    /// Its sequence.
    pub seq: u64,
    /// When the broker appended it.
    pub published_at: Timestamp,
    /// The message.
    pub message: Message,
}

/// Decodes a verified body (see [`verify_body`]) into its message. Fails on any inconsistency:
/// a valid CRC over bytes this code did not write is possible (a crafted file), so every field is
/// checked again.
pub(crate) fn decode_body(body: &[u8]) -> Result<DecodedRecord, FormatError> {
    let mut r = Cursor { b: body, at: 0 };
    let seq = r.u64()?;
    let published_at = Timestamp(r.u64()?);
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FormatError::Invalid("record flags"));
    }
    let id = r.str16()?;
    let subject = r.str16()?;
    let subject = Subject::new(subject).map_err(|_| FormatError::Invalid("subject"))?;
    let mut message = Message::new(subject, Bytes::new());
    message.set_id(MessageId::new(id).map_err(|_| FormatError::Invalid("message id"))?);
    if flags & FLAG_KEY != 0 {
        let key = r.str16()?;
        message
            .set_key(Some(key))
            .map_err(|_| FormatError::Invalid("key"))?;
    }
    let count = r.u16()?;
    for _ in 0..count {
        let name = r.str16()?;
        let len = r.u32()? as usize;
        let value = std::str::from_utf8(r.take(len)?).map_err(|_| FormatError::Invalid("utf-8"))?;
        message
            .headers_mut()
            .insert(name, value)
            .map_err(|_| FormatError::Invalid("header"))?;
    }
    let len = r.u32()? as usize;
    message.set_payload(Bytes::copy_from_slice(r.take(len)?));
    message.set_timestamp(Timestamp(r.u64()?));
    if flags & FLAG_DELAY != 0 {
        message.set_delay(Some(r.duration()?));
    }
    if flags & FLAG_TTL != 0 {
        message.set_ttl(Some(r.duration()?));
    }
    if r.at != body.len() {
        return Err(FormatError::Invalid("trailing bytes in record"));
    }
    Ok(DecodedRecord {
        seq,
        published_at,
        message,
    })
}

/// Decodes one framed record at the start of `b`: prefix, CRC, body. Returns it and its framed
/// length.
pub(crate) fn decode_record(
    b: &[u8],
    max_body: usize,
) -> Result<(DecodedRecord, usize), FormatError> {
    let head = parse_head(b, max_body)?;
    let body = b
        .get(RECORD_PREFIX..head.framed_len())
        .ok_or(FormatError::Short)?;
    verify_body(&head, body)?;
    Ok((decode_body(body)?, head.framed_len()))
}

/// A bounds-checked reader over a byte slice.
pub(crate) struct Cursor<'a> {
    pub b: &'a [u8],
    pub at: usize,
}

impl<'a> Cursor<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Short)?;
        let s = self.b.get(self.at..end).ok_or(FormatError::Short)?;
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str16(&mut self) -> Result<&'a str, FormatError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| FormatError::Invalid("utf-8"))
    }
    fn duration(&mut self) -> Result<Duration, FormatError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(FormatError::Invalid("duration"));
        }
        Ok(Duration::new(secs, nanos))
    }
}

/// Appends `payload` framed as `len u32 | crc32c u32 | payload` (the framing of consumer journals
/// and the small metadata files).
pub(crate) fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads one frame written by [`frame`] from the start of `b`: its payload and framed length.
pub(crate) fn unframe(b: &[u8], max: usize) -> Result<(&[u8], usize), FormatError> {
    if b.len() < 8 {
        return Err(FormatError::Short);
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len > max {
        return Err(FormatError::Invalid("frame length"));
    }
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let payload = b.get(8..8 + len).ok_or(FormatError::Short)?;
    if crc32c::crc32c(payload) != crc {
        return Err(FormatError::Crc);
    }
    Ok((payload, 8 + len))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A message with every field set, including extremes.
    pub(crate) fn full_message() -> Message {
        let mut m = Message::builder("orders.eu.created")
            .unwrap()
            .id("order-17")
            .unwrap()
            .key("customer-42")
            .unwrap()
            .header("content-type", "application/json")
            .unwrap()
            .header("trace.parent", "00-abc\twith tab")
            .unwrap()
            .delay(Duration::new(5, 123))
            .ttl(Duration::new(u64::MAX, 999_999_999))
            .timestamp(Timestamp(1_700_000_000_000_000_001))
            .payload(vec![0u8, 1, 2, 255])
            .build();
        m.headers_mut().insert("empty", "").unwrap();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::full_message;
    use super::*;

    #[test]
    fn every_field_round_trips() {
        for msg in [full_message(), Message::new(Subject::new("a").unwrap(), "")] {
            let mut buf = vec![7u8; 3];
            let n = encode_record(&mut buf, 42, Timestamp(99), &msg, 1 << 20).unwrap();
            assert_eq!(n, buf.len() - 3);
            let (rec, len) = decode_record(&buf[3..], 1 << 20).unwrap();
            assert_eq!(len, n);
            assert_eq!(rec.seq, 42);
            assert_eq!(rec.published_at, Timestamp(99));
            assert_eq!(rec.message, msg);
        }
    }

    #[test]
    fn too_large_leaves_the_buffer_untouched() {
        let msg = Message::new(Subject::new("a").unwrap(), vec![0u8; 1000]);
        let mut buf = vec![1, 2, 3];
        let size = encode_record(&mut buf, 1, Timestamp(0), &msg, 500).unwrap_err();
        assert!(size > 1000, "reports the size it needed: {size}");
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, Timestamp(5), &full_message(), 1 << 20).unwrap();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode_record(&b, 1 << 20).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_other_versions() {
        let h = segment_header(77);
        assert_eq!(parse_segment_header(&h), Ok(77));
        let mut v2 = h;
        v2[4] = 2;
        assert_eq!(parse_segment_header(&v2), Err(FormatError::Version(2)));
        let mut bad = h;
        bad[9] ^= 1;
        assert_eq!(parse_segment_header(&bad), Err(FormatError::Crc));
        assert_eq!(parse_segment_header(&h[..10]), Err(FormatError::Short));
    }
}
