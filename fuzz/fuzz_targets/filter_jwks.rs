//! A JWKS body as fetched from an identity provider (hostile or broken), installed with
//! `Authenticator::update_jwks` for the remote provider. A refused body must leave the last
//! good keys in place; an accepted one must make its own `oct` keys work: a token signed
//! with such a key verifies, and a token under the same `kid` signed with anything else is
//! refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use voxgate_filter::auth::Authenticator;
use voxgate_fuzz::{jwt, oracle};

const GOOD_KID: &str = "good";
const GOOD_SECRET: &[u8] = b"the last good key of the remote provider, 32+ bytes";

fuzz_target!(|data: &[u8]| {
    let authenticator = jwt::authenticator();
    let good =
        json!({"keys": [{"kty": "oct", "kid": GOOD_KID, "k": jwt::b64(GOOD_SECRET)}]}).to_string();
    assert_eq!(
        authenticator.update_jwks(jwt::REMOTE_PROVIDER, good.as_bytes()),
        Ok(1)
    );
    let good_token = remote_token(Some(GOOD_KID), GOOD_SECRET);

    match authenticator.update_jwks(jwt::REMOTE_PROVIDER, data) {
        Err(message) => {
            assert!(!message.is_empty());
            authenticator
                .verify(&good_token, jwt::NOW_S)
                .expect("a refused JWKS body must leave the last good keys in use");
        }
        Ok(count) => {
            assert!(count >= 1, "an accepted key set holds a usable key");
            check_oct_keys(&authenticator, data);
        }
    }
});

/// A token from the remote provider, valid for ten minutes, HS256 with `secret`.
fn remote_token(kid: Option<&str>, secret: &[u8]) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = Value::from(kid);
    }
    let claims = json!({"iss": jwt::REMOTE_ISSUER, "sub": "alice", "aud": "voxgate", "scope": "tts",
                        "exp": jwt::NOW_S + 600, "iat": jwt::NOW_S});
    jwt::sign_hs256(
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
        secret,
    )
}

/// Every plain signing `oct` key with a unique `kid` in the accepted document verifies the
/// tokens it signed and nothing else.
fn check_oct_keys(authenticator: &Authenticator, data: &[u8]) {
    let Ok(document) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(keys) = document.get("keys").and_then(Value::as_array) else {
        return;
    };
    for key in keys {
        let (Some("oct"), Some(kid), Some(k)) =
            (key["kty"].as_str(), key["kid"].as_str(), key["k"].as_str())
        else {
            continue;
        };
        let plain = key
            .as_object()
            .is_some_and(|o| o.keys().all(|m| ["kty", "kid", "k"].contains(&m.as_str())));
        let unique = keys
            .iter()
            .filter(|other| other["kid"].as_str() == Some(kid))
            .count()
            == 1;
        let Some(secret) = decode(k) else { continue };
        if !plain || !unique || secret.len() < 32 {
            continue;
        }
        let token = remote_token(Some(kid), &secret);
        if let Err(rejection) = authenticator.verify(&token, jwt::NOW_S) {
            panic!(
                "a token signed by an accepted key was refused: {}",
                rejection.code
            );
        }
        let forged = remote_token(Some(kid), b"not the key of this kid, but long enough");
        let rejection = authenticator
            .verify(&forged, jwt::NOW_S)
            .expect_err("accepted a token signed by another key");
        oracle::check_auth_rejection(&rejection, &[&forged]);
    }
}

fn decode(k: &str) -> Option<Vec<u8>> {
    use ct_codecs::{Base64UrlSafeNoPadding, Decoder};
    Base64UrlSafeNoPadding::decode_to_vec(k, None).ok()
}
