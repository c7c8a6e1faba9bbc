//! ES256 (ECDSA over P-256 with SHA-256) verification with precomputed tables.
//!
//! A signature check computes `u1·G + u2·Q`. The general routine (what jwt-simple calls)
//! builds a wNAF table for both points on every check and walks 256 doublings. Here both
//! points have a fixed-base table: every multiple `j·256^i·P` for `j` in 1..=128 and the 33
//! signed radix-256 positions of a scalar, in affine form. A scalar multiplication is then at
//! most 33 mixed additions and no doubling. `G`'s table is built once per VM, a key's by the
//! first check that uses the key (about 300 KB and a few milliseconds each), so keys that sign
//! nothing cost nothing. All inputs are public (the key, the
//! message and the signature), so variable-time arithmetic leaks nothing.
//!
//! The check works on the parts the filter has already split: the signing input
//! (`header.payload`) and the raw `r ‖ s` signature (RFC 7518 §3.4). Both forms of a signature,
//! `s` and `n − s`, verify (see docs/authentication.md, "ECDSA signature forms").

use std::sync::OnceLock;

use p256::elliptic_curve::group::{Curve, Group};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::FromSec1Point;
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, Sec1Point};

/// Signed radix-256 digits of a 256-bit scalar: 32, plus the last carry.
const POSITIONS: usize = 33;
/// The largest digit magnitude: digits are in -127..=128.
const MULTIPLES: usize = 128;

/// `multiples[i * MULTIPLES + j - 1]` is `j·256^i·P`.
struct FixedBaseTable {
    multiples: Vec<AffinePoint>,
}

impl FixedBaseTable {
    fn new(point: ProjectivePoint) -> Self {
        let mut projective = Vec::with_capacity(POSITIONS * MULTIPLES);
        let mut base = point;
        for _ in 0..POSITIONS {
            let mut multiple = base;
            for _ in 0..MULTIPLES {
                projective.push(multiple);
                multiple += base;
            }
            for _ in 0..8 {
                base = base.double();
            }
        }
        let mut multiples = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut multiples);
        FixedBaseTable { multiples }
    }

    /// Adds `k·P` to `sum`.
    fn add_multiple(&self, sum: &mut ProjectivePoint, k: &Scalar) {
        for (position, digit) in signed_digits(k).into_iter().enumerate() {
            let at = position * MULTIPLES;
            match digit {
                0 => {}
                1.. => *sum += &self.multiples[at + digit.unsigned_abs() as usize - 1],
                _ => *sum += &-self.multiples[at + digit.unsigned_abs() as usize - 1],
            }
        }
    }
}

/// `k` as `Σ d_i·256^i` with every `d_i` in -127..=128, least significant first.
fn signed_digits(k: &Scalar) -> [i16; POSITIONS] {
    let bytes = k.to_repr();
    let mut digits = [0i16; POSITIONS];
    for (i, byte) in bytes.iter().rev().enumerate() {
        digits[i] = i16::from(*byte);
    }
    for i in 0..POSITIONS - 1 {
        if digits[i] > MULTIPLES as i16 {
            digits[i] -= 256;
            digits[i + 1] += 1;
        }
    }
    digits
}

/// The generator's table, built by the first key that needs it.
fn generator_table() -> &'static FixedBaseTable {
    static TABLE: OnceLock<FixedBaseTable> = OnceLock::new();
    TABLE.get_or_init(|| FixedBaseTable::new(ProjectivePoint::GENERATOR))
}

/// A P-256 public key, and its table once a check has needed it.
pub(crate) struct Es256Key {
    point: ProjectivePoint,
    table: OnceLock<FixedBaseTable>,
}

impl Es256Key {
    /// The key of an uncompressed SEC1 point (`04 ‖ x ‖ y`); `None` for anything not on the
    /// curve, or the identity.
    pub(crate) fn from_sec1(bytes: &[u8]) -> Option<Self> {
        let encoded = Sec1Point::from_bytes(bytes).ok()?;
        let point: AffinePoint = Option::from(AffinePoint::from_sec1_point(&encoded))?;
        let point = ProjectivePoint::from(point);
        if bool::from(point.is_identity()) {
            return None;
        }
        Some(Es256Key { point, table: OnceLock::new() })
    }

    /// Whether `signature` (`r ‖ s`, 64 bytes) is this key's ES256 signature of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Some((r, s)) = signature_scalars(signature) else { return false };
        let digest = hmac_sha256::Hash::hash(message);
        let z = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(digest));
        let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else { return false };
        let mut sum = ProjectivePoint::IDENTITY;
        generator_table().add_multiple(&mut sum, &(z * s_inv));
        self.table.get_or_init(|| FixedBaseTable::new(self.point)).add_multiple(&mut sum, &(r * s_inv));
        if bool::from(sum.is_identity()) {
            return false;
        }
        <Scalar as Reduce<FieldBytes>>::reduce(&sum.to_affine().x()) == r
    }
}

/// `r` and `s`, each in `1..n`; `None` for any other encoding.
fn signature_scalars(signature: &[u8]) -> Option<(Scalar, Scalar)> {
    if signature.len() != 64 {
        return None;
    }
    let scalar = |bytes: &[u8]| -> Option<Scalar> {
        let scalar: Scalar = Option::from(Scalar::from_repr(FieldBytes::try_from(bytes).ok()?))?;
        (!bool::from(scalar.is_zero())).then_some(scalar)
    };
    Some((scalar(&signature[..32])?, scalar(&signature[32..])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::decode_base64url;
    use crate::auth::test_keys::Signer;
    use serde_json::json;

    const ORDER: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6,
        0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
    ];

    fn key_of(signer: &Signer) -> Es256Key {
        let jwk = signer.jwk(None);
        let coordinate = |name: &str| decode_base64url(jwk[name].as_str().unwrap()).unwrap();
        let point = [vec![0x04], coordinate("x"), coordinate("y")].concat();
        Es256Key::from_sec1(&point).expect("a P-256 point")
    }

    /// The signing input and the raw signature of a jwt-simple ES256 token.
    fn signed(signer: &Signer, subject: &str) -> (Vec<u8>, Vec<u8>) {
        let token = signer.sign(None, &json!({"sub": subject}));
        let (input, signature) = token.rsplit_once('.').unwrap();
        (input.as_bytes().to_vec(), decode_base64url(signature).unwrap())
    }

    #[test]
    fn verifies_what_jwt_simple_signs_and_nothing_else() {
        let signer = Signer::es256();
        let key = key_of(&signer);
        for subject in ["alice", "bob", "carol", "dave"] {
            let (input, signature) = signed(&signer, subject);
            assert!(key.verify(&input, &signature), "{subject}");
            let mut other_message = input.clone();
            other_message[0] ^= 1;
            assert!(!key.verify(&other_message, &signature));
            let mut other_signature = signature.clone();
            other_signature[63] ^= 1;
            assert!(!key.verify(&input, &other_signature));
        }
        let (input, signature) = signed(&Signer::es256(), "alice");
        assert!(!key.verify(&input, &signature), "another key's signature");
    }

    #[test]
    fn both_forms_of_a_signature_verify() {
        let signer = Signer::es256();
        let key = key_of(&signer);
        let (input, signature) = signed(&signer, "alice");
        let s: Scalar = Option::from(Scalar::from_repr(FieldBytes::try_from(&signature[32..]).unwrap())).unwrap();
        let twin = [&signature[..32], &(-s).to_repr()[..]].concat();
        assert!(key.verify(&input, &twin));
    }

    #[test]
    fn out_of_range_and_misshapen_signatures_are_refused() {
        let signer = Signer::es256();
        let key = key_of(&signer);
        let (input, signature) = signed(&signer, "alice");
        assert!(!key.verify(&input, &signature[..63]));
        assert!(!key.verify(&input, &[signature.clone(), vec![0]].concat()));
        assert!(!key.verify(&input, &[&[0u8; 32][..], &signature[32..]].concat()), "r = 0");
        assert!(!key.verify(&input, &[&signature[..32], &[0u8; 32][..]].concat()), "s = 0");
        assert!(!key.verify(&input, &[&ORDER[..], &signature[32..]].concat()), "r = n");
        assert!(!key.verify(&input, &[&signature[..32], &ORDER[..]].concat()), "s = n");
    }

    #[test]
    fn the_tables_multiply_like_the_curve_arithmetic() {
        let point = ProjectivePoint::GENERATOR * Scalar::from(7u64);
        let table = FixedBaseTable::new(point);
        let minus_one = -Scalar::ONE;
        for k in [Scalar::ZERO, Scalar::ONE, Scalar::from(128u64), Scalar::from(129u64), Scalar::from(255u64),
                  Scalar::from(u64::MAX), minus_one, minus_one * Scalar::from(3u64).invert().unwrap()] {
            let mut sum = ProjectivePoint::IDENTITY;
            table.add_multiple(&mut sum, &k);
            assert_eq!(sum.to_affine(), (point * k).to_affine());
            let digits = signed_digits(&k);
            assert!(digits.iter().all(|d| (-127..=128).contains(d)), "{digits:?}");
        }
    }

    #[test]
    fn points_off_the_curve_are_not_keys() {
        let signer = Signer::es256();
        let jwk = signer.jwk(None);
        let x = decode_base64url(jwk["x"].as_str().unwrap()).unwrap();
        let mut y = decode_base64url(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        assert!(Es256Key::from_sec1(&[vec![0x04], x, y].concat()).is_none());
        assert!(Es256Key::from_sec1(&[0x00]).is_none(), "the identity");
    }
}
