//! Where a bucket lives in shared data: a fixed table of slots per bucket kind, addressed by a
//! stable hash of the identity, so the number of keys never exceeds the number of slots
//! whatever the number of distinct subjects or addresses. Also the canonical client-address
//! identity used for per-address buckets.

use std::net::{IpAddr, SocketAddr};

/// Prefix of every shared-data key written by the rate limiter.
pub(crate) const KEY_PREFIX: &str = "vg:rl:";

/// FNV-1a 64 over the bytes, finished with the MurmurHash3 64-bit mixer so that the low bits
/// used for the slot index depend on every input byte. Stable across workers, restarts and
/// builds (unlike `std`'s randomly seeded hasher).
pub(crate) fn identity_hash(identity: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A fixed table of `slots` keys named `vg:rl:<kind>:<slot>`.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    kind: String,
    slots: u32,
}

/// The key holding an identity's record, and the tag that tells its owner apart from another
/// identity hashed to the same slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub key: String,
    pub tag: u64,
}

impl SlotTable {
    pub fn new(kind: &str, slots: u32) -> Self {
        SlotTable { kind: kind.to_string(), slots: slots.max(1) }
    }

    pub fn locate(&self, identity: &str) -> Slot {
        let tag = identity_hash(identity);
        Slot { key: format!("{KEY_PREFIX}{}:{}", self.kind, tag % u64::from(self.slots)), tag }
    }
}

/// The identity of a client address for per-address buckets: the IP without the port (a
/// client opens connections from many ports), IPv4-mapped IPv6 as IPv4, and IPv6 reduced to
/// its /64 prefix, because one IPv6 host usually controls a whole /64. Anything that does not
/// parse as an address is used as given.
pub fn client_key(address: &str) -> String {
    let ip = address
        .parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| address.parse::<IpAddr>());
    match ip {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hash_is_stable() {
        // Fixed values: a change would silently move every bucket to another slot.
        assert_eq!(identity_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(identity_hash("alice"), 0x3507_d047_a67c_08f4);
        assert_eq!(identity_hash("bob"), 0xf649_3629_e565_4ae0);
    }

    #[test]
    fn slots_spread_evenly() {
        let table = SlotTable::new("subject", 64);
        let mut counts = [0u32; 64];
        for i in 0..64_000 {
            let slot = table.locate(&format!("user-{i}"));
            let index: usize = slot.key.rsplit(':').next().unwrap().parse().unwrap();
            counts[index] += 1;
        }
        // 1000 expected per slot; a poor mix of the low bits would leave slots nearly empty.
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn keys_stay_within_the_table() {
        let table = SlotTable::new("anonymous", 16);
        let keys: HashSet<String> = (0..10_000).map(|i| table.locate(&format!("10.0.{}.{}", i / 256, i % 256)).key).collect();
        assert_eq!(keys.len(), 16);
        assert!(keys.iter().all(|k| k.starts_with("vg:rl:anonymous:")));
    }

    #[test]
    fn client_key_drops_ports_and_groups_ipv6_by_64() {
        assert_eq!(client_key("203.0.113.9:53211"), "203.0.113.9");
        assert_eq!(client_key("203.0.113.9"), "203.0.113.9");
        assert_eq!(client_key("[2001:db8:1:2:3:4:5:6]:443"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_eq!(client_key("[::ffff:198.51.100.7]:80"), "198.51.100.7");
        assert_eq!(client_key("unix:/run/envoy.sock"), "unix:/run/envoy.sock");
    }
}
