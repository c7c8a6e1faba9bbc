//! The value stored under one shared-data key: who owns the slot, the level of each bucket,
//! and the in-flight leases, in a compact fixed-width little-endian encoding.
//!
//! Layout (version 1):
//! ```text
//! 0      version (1)
//! 1      bucket count n
//! 2..4   plan index (u16)       which plan the owner was charged under
//! 4..6   lease count m (u16)
//! 6..14  identity tag (u64)     hash of the owner's identity; detects slot collisions
//! 14..   n × (tokens in micro-tokens u64, last update ms u64)
//! ..     m × lease start ms (u64)
//! ```

use super::bucket::BucketState;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 14;
const BUCKET_LEN: usize = 16;
const LEASE_LEN: usize = 8;

/// Most leases kept in one record, so a record stays small whatever happens.
pub(crate) const MAX_LEASES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub plan: u16,
    pub tag: u64,
    pub buckets: Vec<BucketState>,
    /// Start time (ms) of each admitted request still holding an in-flight slot.
    pub leases: Vec<u64>,
}

impl Record {
    /// A record for a new owner: every bucket full, nothing in flight.
    pub fn fresh(tag: u64, plan: u16, bucket_count: usize, now_ms: u64) -> Self {
        Record { plan, tag, buckets: vec![BucketState::untouched(now_ms); bucket_count], leases: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let leases = &self.leases[..self.leases.len().min(MAX_LEASES)];
        let mut out =
            Vec::with_capacity(HEADER_LEN + BUCKET_LEN * self.buckets.len() + LEASE_LEN * leases.len());
        out.push(VERSION);
        out.push(self.buckets.len() as u8);
        out.extend_from_slice(&self.plan.to_le_bytes());
        out.extend_from_slice(&(leases.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.tokens.to_le_bytes());
            out.extend_from_slice(&b.last_ms.to_le_bytes());
        }
        for start in leases {
            out.extend_from_slice(&start.to_le_bytes());
        }
        out
    }

    /// `None` when the bytes are not a version-1 record with `bucket_count` buckets
    /// (corrupt, truncated, or written by a configuration with another layout).
    pub fn decode(bytes: &[u8], bucket_count: usize) -> Option<Record> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION || usize::from(bytes[1]) != bucket_count {
            return None;
        }
        let plan = u16::from_le_bytes([bytes[2], bytes[3]]);
        let lease_count = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        if lease_count > MAX_LEASES
            || bytes.len() != HEADER_LEN + BUCKET_LEN * bucket_count + LEASE_LEN * lease_count
        {
            return None;
        }
        let tag = read_u64(bytes, 6);
        let buckets = (0..bucket_count)
            .map(|i| {
                let at = HEADER_LEN + BUCKET_LEN * i;
                BucketState { tokens: read_u64(bytes, at), last_ms: read_u64(bytes, at + 8) }
            })
            .collect();
        let leases_at = HEADER_LEN + BUCKET_LEN * bucket_count;
        let leases = (0..lease_count).map(|i| read_u64(bytes, leases_at + LEASE_LEN * i)).collect();
        Some(Record { plan, tag, buckets, leases })
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            plan: 3,
            tag: 0xdead_beef_cafe_f00d,
            buckets: vec![
                BucketState { tokens: 9_500_000, last_ms: 1_700_000_000_123 },
                BucketState { tokens: u64::MAX, last_ms: 42 },
            ],
            leases: vec![1_700_000_000_000, 1_700_000_000_100],
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(bytes.len(), 14 + 2 * 16 + 2 * 8);
        assert_eq!(Record::decode(&bytes, 2), Some(r));
        let empty = Record::fresh(7, 0, 1, 5);
        assert_eq!(Record::decode(&empty.encode(), 1), Some(empty));
    }

    #[test]
    fn rejects_every_truncation_and_extension() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..len], 2), None, "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer, 2), None);
    }

    #[test]
    fn rejects_wrong_version_layout_and_lease_count() {
        let bytes = sample().encode();
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(Record::decode(&v, 2), None);
        assert_eq!(Record::decode(&bytes, 1), None, "bucket count from another layout");
        let mut m = bytes.clone();
        m[4] = 3; // claims 3 leases, holds 2
        assert_eq!(Record::decode(&m, 2), None);
        assert_eq!(Record::decode(b"garbage that is long enough to parse", 2), None);
    }

    #[test]
    fn lease_list_is_capped_when_encoding() {
        let mut r = Record::fresh(1, 0, 1, 0);
        r.leases = vec![5; MAX_LEASES + 10];
        let decoded = Record::decode(&r.encode(), 1).unwrap();
        assert_eq!(decoded.leases.len(), MAX_LEASES);
    }
}
