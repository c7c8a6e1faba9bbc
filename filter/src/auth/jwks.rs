//! JSON Web Key Sets: turns a JWKS document (inline in the configuration or fetched from an
//! identity provider) into verification keys, each bound to the algorithms its key type allows.
//!
//! The key decides the algorithm: an RSA key verifies only RS*/PS*, a P-256 key only ES256,
//! a P-384 key only ES384, an Ed25519 key only EdDSA and an `oct` secret only HS*. A token
//! header can therefore never make a public key act as an HMAC secret.

use std::sync::Arc;

use jwt_simple::prelude::*;
use serde_json::{Map, Value};

use super::es256::Es256Key;
use super::rsa_pkcs1::{RsaHash, RsaKey};

/// Most keys accepted in one key set; identity providers publish a handful.
const MAX_KEYS: usize = 64;
/// Largest fetched JWKS body accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys tried for a token without `kid`, so a kid-less token never costs more than this many
/// signature checks.
const MAX_CANDIDATES: usize = 4;

/// A JWS algorithm this filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

const RSA_ALGS: [Alg; 6] = [Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512];
const HMAC_ALGS: [Alg; 3] = [Alg::Hs256, Alg::Hs384, Alg::Hs512];

impl Alg {
    /// The algorithm for a JOSE `alg` name; `none` and anything unsupported give `None`.
    pub(crate) fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            // RFC 9864 names the Ed25519 instance of EdDSA "Ed25519".
            "EdDSA" | "Ed25519" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
    fn min_hmac_key_bytes(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => 32,
        }
    }
}

/// One algorithm bound to one key.
pub(crate) enum Verifier {
    Hs256(HS256Key),
    Hs384(HS384Key),
    Hs512(HS512Key),
    /// RS256, RS384, RS512: verified by the filter itself, in Montgomery form (`rsa_pkcs1`).
    Rsa(Arc<RsaKey>, RsaHash),
    Ps256(PS256PublicKey),
    Ps384(PS384PublicKey),
    Ps512(PS512PublicKey),
    /// Verified by the filter itself, on a table of the key (`es256`).
    Es256(Es256Key),
    Es384(ES384PublicKey),
    EdDsa(Ed25519PublicKey),
}

impl Verifier {
    pub(crate) fn alg(&self) -> Alg {
        match self {
            Verifier::Hs256(_) => Alg::Hs256,
            Verifier::Hs384(_) => Alg::Hs384,
            Verifier::Hs512(_) => Alg::Hs512,
            Verifier::Rsa(_, RsaHash::Sha256) => Alg::Rs256,
            Verifier::Rsa(_, RsaHash::Sha384) => Alg::Rs384,
            Verifier::Rsa(_, RsaHash::Sha512) => Alg::Rs512,
            Verifier::Ps256(_) => Alg::Ps256,
            Verifier::Ps384(_) => Alg::Ps384,
            Verifier::Ps512(_) => Alg::Ps512,
            Verifier::Es256(_) => Alg::Es256,
            Verifier::Es384(_) => Alg::Es384,
            Verifier::EdDsa(_) => Alg::EdDsa,
        }
    }

    /// Checks the signature of a compact JWS (jwt-simple also checks the header and time
    /// claims again; the filter's own ES256 and RS256/384/512 checks read only the signing
    /// input and the signature).
    pub(crate) fn verify(&self, token: &str, options: VerificationOptions) -> Result<(), jwt_simple::Error> {
        let options = Some(options);
        match self {
            Verifier::Hs256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Hs384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Hs512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Rsa(key, hash) => signed_parts(token, |input, signature| key.verify(*hash, input, signature)),
            Verifier::Ps256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Ps384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Ps512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Es256(key) => signed_parts(token, |input, signature| key.verify(input, signature)),
            Verifier::Es384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::EdDsa(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
        }
    }
}

/// Checks a token's signature on its parts, the signing input (`header.payload`) and the decoded
/// signature, with `verify`.
fn signed_parts(token: &str, verify: impl Fn(&[u8], &[u8]) -> bool) -> Result<(), jwt_simple::Error> {
    let verified = token.rsplit_once('.').is_some_and(|(input, signature)| {
        decode_base64url(signature).is_some_and(|signature| verify(input.as_bytes(), &signature))
    });
    verified.then_some(()).ok_or_else(|| jwt_simple::JWTError::InvalidSignature.into())
}

/// One JWK: its `kid` and one verifier per algorithm it may be used with.
struct Key {
    kid: Option<String>,
    verifiers: Vec<Verifier>,
}

/// Why a key set, or one key in it, was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwksError {
    /// Index of the offending entry in `keys`, when one key is at fault.
    pub key_index: Option<usize>,
    /// The offending JWK member (`n`, `crv`, …), when one member is at fault.
    pub member: Option<&'static str>,
    pub message: String,
}

impl JwksError {
    fn document(message: impl Into<String>) -> Self {
        JwksError { key_index: None, member: None, message: message.into() }
    }

    /// The JSON path of the problem below the JWKS document (`keys[1].n`).
    pub(crate) fn path(&self) -> String {
        match (self.key_index, self.member) {
            (Some(i), Some(m)) => format!("keys[{i}].{m}"),
            (Some(i), None) => format!("keys[{i}]"),
            _ => "keys".to_string(),
        }
    }
}

/// How strictly individual keys are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    /// Configuration: every key must be usable, so a typo is reported instead of ignored.
    EveryKey,
    /// A provider's published set: keys this filter cannot use (encryption keys, other
    /// curves) are skipped, as long as at least one usable key remains.
    SkipUnusable,
}

/// The usable keys of one provider.
pub(crate) struct KeySet {
    keys: Vec<Key>,
    fingerprint: [u8; 32],
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    UnknownKid,
    AlgorithmNotAllowed,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`).
    pub(crate) fn from_document(document: &Value, strictness: Strictness) -> Result<KeySet, JwksError> {
        let keys = document
            .as_object()
            .and_then(|o| o.get("keys"))
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::document("a JWKS must be an object with a `keys` array"))?;
        if keys.len() > MAX_KEYS {
            return Err(JwksError::document(format!("more than {MAX_KEYS} keys")));
        }
        let mut fingerprint = hmac_sha256::Hash::new();
        let mut parsed = Vec::with_capacity(keys.len());
        for (index, jwk) in keys.iter().enumerate() {
            match parse_key(jwk, &mut fingerprint) {
                Ok(key) => parsed.push(key),
                Err((member, message)) if strictness == Strictness::EveryKey => {
                    return Err(JwksError { key_index: Some(index), member, message });
                }
                Err(_) => {}
            }
        }
        if parsed.is_empty() {
            return Err(JwksError::document("the key set holds no usable signature key"));
        }
        Ok(KeySet { keys: parsed, fingerprint: fingerprint.finalize() })
    }

    /// Parses a fetched JWKS body, skipping keys this filter cannot use.
    pub(crate) fn from_fetched(body: &[u8]) -> Result<KeySet, String> {
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS body of {} bytes exceeds {MAX_JWKS_BYTES}", body.len()));
        }
        let document: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS body is not JSON: {e}"))?;
        KeySet::from_document(&document, Strictness::SkipUnusable).map_err(|e| e.message)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Digest of the key material, kids and algorithms: equal digests mean the same keys.
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The verifiers to try for a token, chosen by its `kid` when it has one and always
    /// restricted to the token's algorithm. No cryptography happens here.
    pub(crate) fn candidates(&self, kid: Option<&str>, alg: Alg) -> Result<Vec<&Verifier>, KeyMiss> {
        let mut chosen = Vec::new();
        let mut kid_known = false;
        for key in &self.keys {
            if let Some(kid) = kid {
                if key.kid.as_deref() != Some(kid) {
                    continue;
                }
                kid_known = true;
            }
            chosen.extend(key.verifiers.iter().filter(|v| v.alg() == alg));
            if chosen.len() >= MAX_CANDIDATES {
                chosen.truncate(MAX_CANDIDATES);
                break;
            }
        }
        match (chosen.is_empty(), kid.is_some() && !kid_known) {
            (_, true) => Err(KeyMiss::UnknownKid),
            (true, false) => Err(KeyMiss::AlgorithmNotAllowed),
            (false, false) => Ok(chosen),
        }
    }
}

type KeyError = (Option<&'static str>, String);

fn key_error(member: &'static str, message: impl Into<String>) -> KeyError {
    (Some(member), message.into())
}

fn parse_key(jwk: &Value, fingerprint: &mut hmac_sha256::Hash) -> Result<Key, KeyError> {
    let jwk = jwk.as_object().ok_or((None, "a JWK must be an object".to_string()))?;
    let kty = optional_str(jwk, "kty")?.ok_or_else(|| key_error("kty", "missing"))?;
    if let Some(key_use) = optional_str(jwk, "use")? {
        if key_use != "sig" {
            return Err(key_error("use", "only signature keys (`use: sig`) verify tokens"));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err(key_error("key_ops", "must include \"verify\""));
        }
    }
    let kid = optional_str(jwk, "kid")?.map(str::to_string);
    let declared = match optional_str(jwk, "alg")? {
        Some(name) => {
            Some(Alg::from_name(name).ok_or_else(|| key_error("alg", "not a supported signature algorithm"))?)
        }
        None => None,
    };
    let (verifiers, material) = match kty {
        "RSA" => rsa_verifiers(jwk, declared)?,
        "EC" => ec_verifiers(jwk, declared)?,
        "oct" => hmac_verifiers(jwk, declared)?,
        "OKP" => okp_verifiers(jwk, declared)?,
        _ => return Err(key_error("kty", "must be RSA, EC, oct or OKP")),
    };
    for part in [kid.as_deref().unwrap_or("").as_bytes(), kty.as_bytes(), &material] {
        fingerprint.update((part.len() as u64).to_be_bytes());
        fingerprint.update(part);
    }
    for verifier in &verifiers {
        fingerprint.update(verifier.alg().name());
    }
    Ok(Key { kid, verifiers })
}

/// The algorithms a key may be used with: its family, narrowed to the JWK `alg` if declared.
fn allowed_algs(family: &[Alg], declared: Option<Alg>, kind: &str) -> Result<Vec<Alg>, KeyError> {
    match declared {
        None => Ok(family.to_vec()),
        Some(alg) if family.contains(&alg) => Ok(vec![alg]),
        Some(alg) => Err(key_error("alg", format!("{} cannot be used with {kind} keys", alg.name()))),
    }
}

fn refuse_private_members(jwk: &Map<String, Value>, members: &[&'static str]) -> Result<(), KeyError> {
    match members.iter().find(|m| jwk.contains_key(**m)) {
        Some(member) => Err(key_error(member, "private key material does not belong in a verification key set")),
        None => Ok(()),
    }
}

fn rsa_verifiers(jwk: &Map<String, Value>, declared: Option<Alg>) -> Result<(Vec<Verifier>, Vec<u8>), KeyError> {
    refuse_private_members(jwk, &["d", "p", "q", "dp", "dq", "qi", "oth"])?;
    let algs = allowed_algs(&RSA_ALGS, declared, "RSA")?;
    let n = base64url_member(jwk, "n")?;
    let e = base64url_member(jwk, "e")?;
    let significant_e = &e[e.iter().position(|b| *b != 0).unwrap_or(e.len())..];
    if significant_e != [1, 0, 1] {
        return Err(key_error("e", "only the public exponent 65537 (AQAB) is accepted"));
    }
    let not_a_modulus = || key_error("n", "not an RSA modulus of 2048 to 4096 bits");
    // One key, with its Montgomery parameters, for the PKCS#1 v1.5 algorithms it may sign with.
    let pkcs1 = match algs.iter().any(|alg| matches!(alg, Alg::Rs256 | Alg::Rs384 | Alg::Rs512)) {
        true => Some(Arc::new(RsaKey::from_modulus(&n).ok_or_else(not_a_modulus)?)),
        false => None,
    };
    let mut verifiers = Vec::with_capacity(algs.len());
    for alg in algs {
        let rsa = |hash| pkcs1.clone().map(|key| Verifier::Rsa(key, hash)).ok_or_else(not_a_modulus);
        let built = match alg {
            Alg::Rs256 => rsa(RsaHash::Sha256)?,
            Alg::Rs384 => rsa(RsaHash::Sha384)?,
            Alg::Rs512 => rsa(RsaHash::Sha512)?,
            Alg::Ps256 => PS256PublicKey::from_components(&n, &e).map(Verifier::Ps256).map_err(|_| not_a_modulus())?,
            Alg::Ps384 => PS384PublicKey::from_components(&n, &e).map(Verifier::Ps384).map_err(|_| not_a_modulus())?,
            _ => PS512PublicKey::from_components(&n, &e).map(Verifier::Ps512).map_err(|_| not_a_modulus())?,
        };
        verifiers.push(built);
    }
    let mut material = n;
    material.extend_from_slice(&e);
    Ok((verifiers, material))
}

fn ec_verifiers(jwk: &Map<String, Value>, declared: Option<Alg>) -> Result<(Vec<Verifier>, Vec<u8>), KeyError> {
    refuse_private_members(jwk, &["d"])?;
    let crv = optional_str(jwk, "crv")?.ok_or_else(|| key_error("crv", "missing"))?;
    let (alg, coordinate_bytes) = match crv {
        "P-256" => (Alg::Es256, 32),
        "P-384" => (Alg::Es384, 48),
        _ => return Err(key_error("crv", "EC keys must use P-256 or P-384")),
    };
    allowed_algs(&[alg], declared, crv)?;
    let x = base64url_member(jwk, "x")?;
    let y = base64url_member(jwk, "y")?;
    if x.len() != coordinate_bytes {
        return Err(key_error("x", format!("must be {coordinate_bytes} bytes for {crv}")));
    }
    if y.len() != coordinate_bytes {
        return Err(key_error("y", format!("must be {coordinate_bytes} bytes for {crv}")));
    }
    let mut point = Vec::with_capacity(1 + 2 * coordinate_bytes);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let verifier = match alg {
        Alg::Es256 => Es256Key::from_sec1(&point).map(Verifier::Es256),
        _ => ES384PublicKey::from_bytes(&point).ok().map(Verifier::Es384),
    }
    .ok_or_else(|| key_error("x", format!("(x, y) is not a point on {crv}")))?;
    Ok((vec![verifier], point))
}

fn hmac_verifiers(jwk: &Map<String, Value>, declared: Option<Alg>) -> Result<(Vec<Verifier>, Vec<u8>), KeyError> {
    let algs = allowed_algs(&HMAC_ALGS, declared, "oct")?;
    let k = base64url_member(jwk, "k")?;
    let long_enough: Vec<Alg> = algs.iter().copied().filter(|alg| k.len() >= alg.min_hmac_key_bytes()).collect();
    if long_enough.is_empty() {
        let needed = algs.iter().map(|alg| alg.min_hmac_key_bytes()).min().unwrap_or(32);
        return Err(key_error("k", format!("an HMAC key needs at least {needed} bytes, got {}", k.len())));
    }
    let verifiers = long_enough
        .into_iter()
        .map(|alg| match alg {
            Alg::Hs256 => Verifier::Hs256(HS256Key::from_bytes(&k)),
            Alg::Hs384 => Verifier::Hs384(HS384Key::from_bytes(&k)),
            _ => Verifier::Hs512(HS512Key::from_bytes(&k)),
        })
        .collect();
    Ok((verifiers, k))
}

fn okp_verifiers(jwk: &Map<String, Value>, declared: Option<Alg>) -> Result<(Vec<Verifier>, Vec<u8>), KeyError> {
    refuse_private_members(jwk, &["d"])?;
    let crv = optional_str(jwk, "crv")?.ok_or_else(|| key_error("crv", "missing"))?;
    if crv != "Ed25519" {
        return Err(key_error("crv", "OKP keys must use Ed25519"));
    }
    allowed_algs(&[Alg::EdDsa], declared, crv)?;
    let x = base64url_member(jwk, "x")?;
    let key = Ed25519PublicKey::from_bytes(&x).map_err(|_| key_error("x", "not a 32-byte Ed25519 public key"))?;
    Ok((vec![Verifier::EdDsa(key)], x))
}

fn optional_str<'a>(jwk: &'a Map<String, Value>, member: &'static str) -> Result<Option<&'a str>, KeyError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(key_error(member, "must be a string")),
    }
}

fn base64url_member(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = optional_str(jwk, member)?.ok_or_else(|| key_error(member, "missing"))?;
    let bytes = decode_base64url(text).ok_or_else(|| key_error(member, "not base64url"))?;
    if bytes.is_empty() {
        return Err(key_error(member, "empty"));
    }
    Ok(bytes)
}

/// Decodes base64url; trailing padding, which some publishers add, is tolerated.
pub(crate) fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    Base64UrlSafeNoPadding::decode_to_vec(text.trim_end_matches('='), None).ok()
}
