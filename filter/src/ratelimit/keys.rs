//! Where a bucket lives in shared data: a fixed table of slots per bucket kind, addressed by a
//! keyed hash of the identity, so the number of keys never exceeds the number of slots
//! whatever the number of distinct subjects or addresses, and nobody without the deployment's
//! secret can tell which identities share a slot. Also the canonical client-address identity
//! used for per-address buckets.

use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher13;

use super::secret::SharedSecret;
use super::store::{SharedStore, StoreError};

/// Prefix of every shared-data key written by the rate limiter.
pub(crate) const KEY_PREFIX: &str = "vg:rl:";

/// The 128-bit secret that keys the slot hash, common to every worker of one Envoy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashKey(pub [u8; 16]);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// SipHash-1-3 of the identity under the deployment's secret. Public, unkeyed hashes let a
/// client choose identities that land in a victim's slot (and so share, and drain, its
/// buckets); with a secret key the slots of an identity cannot be predicted or aimed at.
fn identity_hash(key: &HashKey, identity: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_key(&key.0);
    hasher.write(identity.as_bytes());
    hasher.finish()
}

/// A fixed table of `slots` keys named `vg:rl:<kind>:<slot>`.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    kind: String,
    slots: u32,
    secret: SharedSecret,
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
        SlotTable { kind: kind.to_string(), slots: slots.max(1), secret: SharedSecret::default() }
    }

    /// The slot of `identity`. The first call reads (or creates) the deployment's secret in
    /// `store`; later calls reuse it.
    pub fn locate(&self, store: &dyn SharedStore, identity: &str) -> Result<Slot, StoreError> {
        let key = self.secret.get(store)?;
        Ok(self.locate_with(&key, identity))
    }

    fn locate_with(&self, key: &HashKey, identity: &str) -> Slot {
        let tag = identity_hash(key, identity);
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

    const KEY_A: HashKey = HashKey(*b"0123456789abcdef");
    const KEY_B: HashKey = HashKey(*b"fedcba9876543210");

    fn index(slot: &Slot) -> usize {
        slot.key.rsplit(':').next().unwrap().parse().unwrap()
    }

    #[test]
    fn the_hash_depends_on_the_secret() {
        assert_eq!(identity_hash(&KEY_A, "alice"), identity_hash(&KEY_A, "alice"));
        assert_ne!(identity_hash(&KEY_A, "alice"), identity_hash(&KEY_B, "alice"));
        assert_ne!(identity_hash(&KEY_A, "alice"), identity_hash(&KEY_A, "alicf"));
    }

    #[test]
    fn different_secrets_send_identities_to_different_slots() {
        let table = SlotTable::new("subject", 65_536);
        let identities: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let same_slot = identities
            .iter()
            .filter(|id| table.locate_with(&KEY_A, id).key == table.locate_with(&KEY_B, id).key)
            .count();
        // Independent slots agree for about 1000/65536 identities; an unkeyed hash for all.
        assert!(same_slot <= 3, "{same_slot} identities kept their slot under another secret");
        assert!(identities.iter().all(|id| table.locate_with(&KEY_A, id).tag != table.locate_with(&KEY_B, id).tag));
    }

    #[test]
    fn identities_sharing_a_slot_under_one_secret_are_split_by_another() {
        let table = SlotTable::new("subject", 64);
        let target = table.locate_with(&KEY_A, "victim");
        let aimed: Vec<String> = (0..)
            .map(|i| format!("attacker-{i}"))
            .filter(|id| table.locate_with(&KEY_A, id).key == target.key)
            .take(20)
            .collect();
        let victim_elsewhere = table.locate_with(&KEY_B, "victim").key;
        let still_aimed = aimed.iter().filter(|id| table.locate_with(&KEY_B, id).key == victim_elsewhere).count();
        assert!(still_aimed <= 3, "{still_aimed} of 20 identities aimed with one secret still hit under another");
    }

    #[test]
    fn slots_spread_evenly() {
        let table = SlotTable::new("subject", 64);
        let mut counts = [0u32; 64];
        for i in 0..64_000 {
            counts[index(&table.locate_with(&KEY_A, &format!("user-{i}")))] += 1;
        }
        // 1000 expected per slot; a poor mix of the low bits would leave slots nearly empty.
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn keys_stay_within_the_table() {
        let table = SlotTable::new("anonymous", 16);
        let keys: HashSet<String> =
            (0..10_000).map(|i| table.locate_with(&KEY_A, &format!("10.0.{}.{}", i / 256, i % 256)).key).collect();
        assert_eq!(keys.len(), 16);
        assert!(keys.iter().all(|k| k.starts_with("vg:rl:anonymous:")));
    }

    #[test]
    fn the_secret_is_never_printed() {
        assert_eq!(format!("{KEY_A:?}"), "HashKey(..)");
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
