//! Compact JWS for the token targets: a fixed authenticator configuration with inline keys
//! of every family, HS256 signing with the fuzz-only secrets it trusts, and the independent
//! check that a token the filter accepted really carries a valid HMAC by one of them.
//!
//! The RSA, EC and Ed25519 keys are public keys whose private halves were discarded: no
//! token signed by them can exist, so the filter accepting one would be a forgery.

use std::rc::Rc;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
use serde_json::{json, Value};
use voxgate_filter::auth::{AuthConfig, Authenticator, Verified};

use crate::oracle;

/// Secrets of the inline `oct` keys (fuzzing only; they protect nothing).
pub const DEV_SECRET: &[u8] = b"voxgate fuzzing secret, dev provider, 32+ bytes";
pub const LAX_SECRET: &[u8] = b"voxgate fuzzing secret, lax provider, 32+ bytes";

pub const DEV_ISSUER: &str = "https://voxgate.local/dev";
pub const LAX_ISSUER: &str = "https://lax.test";
pub const REMOTE_ISSUER: &str = "https://idp.example";
pub const REMOTE_PROVIDER: &str = "corp";
pub const DEV_KID: &str = "hs";
/// Header carrying a raw token, besides `Authorization: Bearer`.
pub const TOKEN_HEADER: &str = "x-api-token";
pub const CLOCK_SKEW_S: u64 = 60;
/// The dev provider's `max_lifetime_seconds`.
pub const DEV_MAX_LIFETIME_S: u64 = 86_400;
/// 2027-01-15, the clock the targets start from.
pub const NOW_S: u64 = 1_800_000_000;

/// Public keys with no private half anywhere.
const PUBLIC_KEYS: &str = r#"[
 {"kty": "RSA", "kid": "rs", "use": "sig", "n": "o1_UDpn9Q7Nzc2lRbbr-XbifHgU6S4x8vgl8XBogjgmfFBK0_7lBiQIaHDjJLxYyaleE-qx_zH0ri7tyJiLlLrShEVlPcI72rog5tYaAfbAaJNRZ12hw0AwMJyG8Jzkp2U-igJQq5S_wSNuihoPMEHf7iBTRdVriVzylsf-k5I7sqvWSh9ChOvpEtII5mWaSB7d8j5UUkTd3rpsTKc3_N30plNs3P6kD7Nqhm7oUHUd3EVd07_b2KzNr2KP33YDRjFuFfnrh_jnsOUMcPM7HXHGumBocbrwdm7nNjPdBcNA6GIMq_HfeqXcp74Qy-OqqTF4wlPM2PrtBN2YcH5eE-w", "e": "AQAB"},
 {"kty": "EC", "kid": "es", "crv": "P-256", "x": "egpl65aU96kCPcaEZ6k4bXY5waPclJDUVIVGnYrtBhU", "y": "xJELQpk5DVJXRFoWmeUHwpzhNSktzYEmRwef3FGsSXI"},
 {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "4Wj1d_fF1Nf5m3aFizh9rvwyRsBQz5KpmAvtMpetTxY"}
]"#;

pub fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    Base64UrlSafeNoPadding::decode_to_vec(text, None).ok()
}

/// The authentication section the token targets run with.
pub fn auth_config() -> Value {
    let mut dev_keys: Vec<Value> = serde_json::from_str(PUBLIC_KEYS).unwrap_or_default();
    dev_keys.push(json!({"kty": "oct", "kid": DEV_KID, "k": b64(DEV_SECRET)}));
    json!({
        "providers": [
            {"name": "dev", "issuer": DEV_ISSUER, "audiences": ["voxgate"], "jwks": {"keys": dev_keys},
             "max_lifetime_seconds": DEV_MAX_LIFETIME_S},
            {"name": "lax", "issuer": LAX_ISSUER, "audiences": ["tts", "voxgate"], "require_exp": false,
             "jwks": {"keys": [{"kty": "oct", "alg": "HS256", "k": b64(LAX_SECRET)}]}},
            {"name": REMOTE_PROVIDER, "issuer": REMOTE_ISSUER, "audiences": ["voxgate"],
             "remote_jwks": {"cluster": "jwks", "authority": "idp.example", "path": "/.well-known/jwks.json"}}
        ],
        "token_header": TOKEN_HEADER,
        "clock_skew_seconds": CLOCK_SKEW_S,
        "required_scopes": ["tts"],
        "forward_claims": {"plan": "x-voxgate-plan", "email": "x-voxgate-email"},
        "cache_entries": 16,
        "max_token_bytes": 8192
    })
}

pub fn authenticator() -> Authenticator {
    let config: AuthConfig =
        serde_json::from_value(auth_config()).expect("the fuzz auth configuration parses");
    config
        .compile()
        .expect("the fuzz auth configuration compiles")
}

/// A time claim as RFC 7519 §2 reads it: seconds, fractions dropped; `None` when absent or not
/// a non-negative number (a token with such a claim is never accepted).
fn numeric_date(claims: &serde_json::Map<String, Value>, name: &str) -> Option<u64> {
    let value = claims.get(name)?;
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// `header.payload.signature` over the given segment bytes, HMAC-SHA256 with `secret`.
pub fn sign_hs256(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let mac = hmac_sha256::HMAC::mac(signing_input.as_bytes(), secret);
    format!("{signing_input}.{}", b64(&mac))
}

/// Whether `token` carries a valid HMAC-SHA256 by one of `secrets` over its own signing input,
/// under an `HS256` header: the only kind of token the fuzzer can legitimately produce.
pub fn is_genuine_hs256(token: &str, secrets: &[&[u8]]) -> bool {
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((header, _)) = signing_input.split_once('.') else {
        return false;
    };
    let alg_is_hs256 = unb64(header)
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h.get("alg") == Some(&Value::from("HS256")));
    let Some(signature) = unb64(signature) else {
        return false;
    };
    alg_is_hs256
        && secrets.iter().any(|secret| {
            hmac_sha256::HMAC::mac(signing_input.as_bytes(), secret) == signature.as_slice()
        })
}

/// Verifies `token` at `now_s` and judges the answer: a refusal is a well-formed 401/403 that
/// does not echo the token; an accepted token carries a genuine HMAC by a configured secret,
/// names its subject and a configured issuer, is not expired, forwards only safe headers, and
/// verifies again the same way from the cache. Returns the accepted identity.
pub fn check_verification(
    authenticator: &Authenticator,
    token: &str,
    now_s: u64,
) -> Option<Rc<Verified>> {
    let verified = match authenticator.verify(token, now_s) {
        Ok(verified) => verified,
        Err(rejection) => {
            oracle::check_auth_rejection(&rejection, &[token]);
            return None;
        }
    };
    assert!(
        is_genuine_hs256(token, &[DEV_SECRET, LAX_SECRET]),
        "accepted a token without a valid signature by a configured key"
    );
    assert!(!verified.subject.is_empty());
    assert!([DEV_ISSUER, LAX_ISSUER].contains(&verified.issuer.as_str()));
    assert!(
        now_s <= verified.expires_at.saturating_add(CLOCK_SKEW_S),
        "accepted an expired token"
    );
    if verified.issuer == DEV_ISSUER {
        let start = numeric_date(&verified.claims, "iat")
            .or_else(|| numeric_date(&verified.claims, "nbf"))
            .unwrap_or(now_s);
        assert!(
            verified.expires_at.saturating_sub(start) <= DEV_MAX_LIFETIME_S,
            "accepted a token valid for longer than the provider's max_lifetime_seconds"
        );
    }
    oracle::check_forwarded(&verified.forwarded);
    let again = authenticator
        .verify(token, now_s)
        .expect("a verified token verifies again from the cache");
    assert_eq!(again, verified);
    Some(verified)
}
