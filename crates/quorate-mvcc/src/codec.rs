//! On-disk record format for one revision of one key.
//!
//! `[kind: u8][crc32: u32 LE over payload][payload: mvccpb.KeyValue protobuf]`.
//! The checksum is computed right before the write and verified right after
//! every read, so a flipped bit is reported instead of served.

use prost::Message;
use quorate_proto::mvccpb::KeyValue;

use crate::MvccError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    Put = 1,
    Tombstone = 2,
}

impl RecordKind {
    pub(crate) fn from_u8(b: u8) -> Result<RecordKind, MvccError> {
        match b {
            1 => Ok(RecordKind::Put),
            2 => Ok(RecordKind::Tombstone),
            other => Err(MvccError::Corrupt(format!("unknown record kind {other}"))),
        }
    }
}

const HEADER_LEN: usize = 5;

pub(crate) fn encode(kind: RecordKind, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + kv.encoded_len());
    out.push(kind as u8);
    out.extend_from_slice(&[0; 4]);
    // Encoding into a Vec cannot fail: it grows as needed.
    kv.encode(&mut out).unwrap_or_default();
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(RecordKind, KeyValue), MvccError> {
    if bytes.len() < HEADER_LEN {
        return Err(MvccError::Corrupt(format!(
            "record of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    let kind = RecordKind::from_u8(bytes[0])?;
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(MvccError::Corrupt(format!(
            "record checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    let kv = KeyValue::decode(payload)
        .map_err(|e| MvccError::Corrupt(format!("record does not decode: {e}")))?;
    Ok((kind, kv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_bit_flip_detected() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        };
        let mut rec = encode(RecordKind::Put, &kv);
        let (kind, back) = decode(&rec).expect("decodes");
        assert_eq!(kind, RecordKind::Put);
        assert_eq!(back, kv);
        let last = rec.len() - 1;
        rec[last] ^= 0x01;
        assert!(matches!(decode(&rec), Err(MvccError::Corrupt(_))));
        assert!(matches!(decode(&rec[..3]), Err(MvccError::Corrupt(_))));
    }
}
