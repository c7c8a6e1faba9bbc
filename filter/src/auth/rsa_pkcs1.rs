//! RS256, RS384 and RS512 (RSASSA-PKCS1-v1_5, RFC 8017 §8.2.2) verification in Montgomery
//! form.
//!
//! With the public exponent fixed at 65537 (the only one the filter accepts), a check is
//! `s^65537 mod n`: sixteen squarings and one multiplication. The general routines (jwt-simple's
//! pure-Rust RSA) spend most of a check around that: arbitrary-precision division for every
//! reduction, and 64-bit limbs that WebAssembly multiplies through emulated 128-bit products.
//! Here the key's Montgomery parameters are computed once, when the key is loaded, and every
//! product is a Montgomery multiplication on the target's native limbs. The result is then
//! compared with the one encoding the message may have (`EMSA-PKCS1-v1_5`), byte for byte. All
//! inputs are public (the key, the message and the signature), so variable-time steps leak
//! nothing.
//!
//! The check works on the parts the filter has already split: the signing input
//! (`header.payload`) and the raw signature bytes.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Limb, Odd};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Accepted modulus sizes, as for every other RSA algorithm the filter takes.
pub(crate) const MODULUS_BITS: std::ops::RangeInclusive<u32> = 2048..=4096;

/// The digest a PKCS#1 v1.5 signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RsaHash {
    Sha256,
    Sha384,
    Sha512,
}

impl RsaHash {
    /// The DER `DigestInfo` prefix of the digest (RFC 8017 §9.2, note 1), and the digest.
    fn digest_info(self, message: &[u8]) -> (&'static [u8], Vec<u8>) {
        match self {
            RsaHash::Sha256 => (
                &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20],
                Sha256::digest(message).to_vec(),
            ),
            RsaHash::Sha384 => (
                &[0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30],
                Sha384::digest(message).to_vec(),
            ),
            RsaHash::Sha512 => (
                &[0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40],
                Sha512::digest(message).to_vec(),
            ),
        }
    }
}

/// An RSA public key with exponent 65537, ready for Montgomery arithmetic.
pub(crate) struct RsaKey {
    params: BoxedMontyParams,
    modulus: BoxedUint,
    /// `k`: the modulus length in bytes, the length of every signature.
    length: usize,
}

impl RsaKey {
    /// The key of big-endian modulus `n`; `None` unless it is an odd number of 2048 to 4096
    /// bits.
    pub(crate) fn from_modulus(n: &[u8]) -> Option<RsaKey> {
        let n = &n[n.iter().position(|b| *b != 0)?..];
        let bits = u32::try_from(n.len() * 8).ok()? - n[0].leading_zeros();
        if !MODULUS_BITS.contains(&bits) {
            return None;
        }
        let modulus = BoxedUint::from_be_slice(n, precision(n.len())?).ok()?;
        let odd = Odd::new(modulus.clone()).into_option()?;
        Some(RsaKey { params: BoxedMontyParams::new_vartime(odd), modulus, length: n.len() })
    }

    /// Whether `signature` is this key's PKCS#1 v1.5 signature of `message` under `hash`.
    pub(crate) fn verify(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.length {
            return false;
        }
        let Some(s) = precision(self.length).and_then(|bits| BoxedUint::from_be_slice(signature, bits).ok()) else {
            return false;
        };
        if s >= self.modulus {
            return false;
        }
        let base = BoxedMontyForm::new(s, &self.params);
        let mut power = base.clone();
        for _ in 0..16 {
            power = power.square();
        }
        let encoded = power.mul(&base).retrieve().to_be_bytes();
        // The precision is whole limbs: the bytes above the modulus length are zero.
        let (high, message_representative) = encoded.split_at(encoded.len() - self.length);
        high.iter().all(|b| *b == 0) && message_representative == expected_encoding(hash, message, self.length)
    }
}

/// Bits of a `BoxedUint` holding `bytes` bytes: whole limbs.
fn precision(bytes: usize) -> Option<u32> {
    let bits = u32::try_from(bytes.checked_mul(8)?).ok()?;
    Some(bits.div_ceil(Limb::BITS) * Limb::BITS)
}

/// `EMSA-PKCS1-v1_5(message, length)`: `00 01 FF…FF 00 ‖ DigestInfo ‖ digest`.
fn expected_encoding(hash: RsaHash, message: &[u8], length: usize) -> Vec<u8> {
    let (prefix, digest) = hash.digest_info(message);
    let padding = length - 3 - prefix.len() - digest.len();
    let mut encoded = Vec::with_capacity(length);
    encoded.extend_from_slice(&[0x00, 0x01]);
    encoded.resize(2 + padding, 0xff);
    encoded.push(0x00);
    encoded.extend_from_slice(prefix);
    encoded.extend_from_slice(&digest);
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_keys;
    use jwt_simple::prelude::*;

    fn parts(token: &str) -> (Vec<u8>, Vec<u8>) {
        let (input, signature) = token.rsplit_once('.').unwrap();
        (input.as_bytes().to_vec(), Base64UrlSafeNoPadding::decode_to_vec(signature, None).unwrap())
    }

    fn signer() -> RS256KeyPair {
        RS256KeyPair::from_der(test_keys::rsa_key_der()).unwrap()
    }

    fn modulus(key: &RS256KeyPair) -> Vec<u8> {
        key.public_key().to_components().n
    }

    #[test]
    fn verifies_what_jwt_simple_signs_and_nothing_else() {
        let signer = signer();
        let key = RsaKey::from_modulus(&modulus(&signer)).unwrap();
        let token = signer.sign(Claims::create(Duration::from_mins(5)).with_subject("alice")).unwrap();
        let (input, signature) = parts(&token);
        assert!(key.verify(RsaHash::Sha256, &input, &signature));
        assert!(!key.verify(RsaHash::Sha384, &input, &signature), "another digest");
        let mut tampered = input.clone();
        tampered[3] ^= 1;
        assert!(!key.verify(RsaHash::Sha256, &tampered, &signature));
        let mut forged = signature.clone();
        forged[100] ^= 1;
        assert!(!key.verify(RsaHash::Sha256, &input, &forged));
        let mut n = modulus(&signer);
        n[50] ^= 0x10;
        let other = RsaKey::from_modulus(&n).unwrap();
        assert!(!other.verify(RsaHash::Sha256, &input, &signature), "another key");
    }

    #[test]
    fn rs384_and_rs512_use_their_digests() {
        let key = RsaKey::from_modulus(&modulus(&signer())).unwrap();
        let der = test_keys::rsa_key_der();
        let rs384 = RS384KeyPair::from_der(der).unwrap();
        let rs512 = RS512KeyPair::from_der(der).unwrap();
        let (input, signature) = parts(&rs384.sign(Claims::create(Duration::from_mins(5))).unwrap());
        assert!(key.verify(RsaHash::Sha384, &input, &signature));
        assert!(!key.verify(RsaHash::Sha256, &input, &signature));
        let (input, signature) = parts(&rs512.sign(Claims::create(Duration::from_mins(5))).unwrap());
        assert!(key.verify(RsaHash::Sha512, &input, &signature));
    }

    #[test]
    fn misshapen_signatures_are_refused() {
        let signer = signer();
        let n = modulus(&signer);
        let key = RsaKey::from_modulus(&n).unwrap();
        let (input, signature) = parts(&signer.sign(Claims::create(Duration::from_mins(5))).unwrap());
        assert!(!key.verify(RsaHash::Sha256, &input, &signature[1..]), "too short");
        let mut long = vec![0];
        long.extend_from_slice(&signature);
        assert!(!key.verify(RsaHash::Sha256, &input, &long), "too long, even with a leading zero");
        assert!(!key.verify(RsaHash::Sha256, &input, &n), "s = n");
        assert!(!key.verify(RsaHash::Sha256, &input, &vec![0xff; n.len()]), "s > n");
        assert!(!key.verify(RsaHash::Sha256, &input, &vec![0; n.len()]));
        let mut one = vec![0; n.len()];
        one[n.len() - 1] = 1;
        assert!(!key.verify(RsaHash::Sha256, &input, &one));
    }

    #[test]
    fn only_odd_moduli_of_2048_to_4096_bits_are_keys() {
        let n = modulus(&signer());
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&n);
        assert!(RsaKey::from_modulus(&padded).is_some(), "leading zeros are not bits");
        assert!(RsaKey::from_modulus(&n[1..]).is_none(), "2040 bits");
        assert!(RsaKey::from_modulus(&vec![0xff; 513]).is_none(), "4104 bits");
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(RsaKey::from_modulus(&even).is_none());
        assert!(RsaKey::from_modulus(&[]).is_none());
        assert!(RsaKey::from_modulus(&[0; 300]).is_none());
    }
}
