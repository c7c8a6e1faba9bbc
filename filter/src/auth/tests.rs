//! Behaviour of the `Authenticator` as the pipeline sees it: real keys, real signatures,
//! every refusal code, the cache and JWKS rotation.

use std::rc::Rc;

use serde_json::{json, Value};

use super::test_keys::*;
use super::*;
use crate::decision::Rejection;

fn provider(name: &str, issuer: &str, keys: Vec<Value>) -> Value {
    json!({"name": name, "issuer": issuer, "audiences": [AUDIENCE, "other-service"], "jwks": {"keys": keys}})
}

fn compile(config: Value) -> Result<Authenticator, crate::error::ConfigError> {
    serde_json::from_value::<AuthConfig>(config).expect("config shape").compile()
}

/// One inline provider with `keys`, requiring the `tts` scope.
fn authenticator(keys: Vec<Value>) -> Authenticator {
    compile(json!({"providers": [provider("dev", ISSUER, keys)], "required_scopes": ["tts"]})).expect("valid config")
}

fn refusal(result: Result<Rc<Verified>, Rejection>) -> Rejection {
    match result {
        Ok(v) => panic!("expected a refusal, got a verified token for {}", v.subject),
        Err(r) => r,
    }
}

fn challenge(rejection: &Rejection) -> &str {
    rejection
        .headers
        .iter()
        .find(|(name, _)| name == "WWW-Authenticate")
        .map(|(_, value)| value.as_str())
        .expect("a WWW-Authenticate challenge")
}

fn assert_refused(result: Result<Rc<Verified>, Rejection>, status: u16, code: &str) -> Rejection {
    let rejection = refusal(result);
    assert_eq!((rejection.status(), rejection.code.as_str()), (status, code), "{}", rejection.message);
    rejection
}

#[test]
fn every_algorithm_family_verifies() {
    let signers = [
        ("RS256", Signer::rs256()),
        ("PS256", Signer::ps256()),
        ("ES256", Signer::es256()),
        ("ES384", Signer::es384()),
        ("EdDSA", Signer::ed25519()),
        ("HS256", Signer::hs256(HMAC_SECRET)),
    ];
    let keys = signers.iter().map(|(name, s)| s.jwk(Some(name))).collect();
    let auth = authenticator(keys);
    for (name, signer) in &signers {
        let verified = auth
            .verify(&signer.sign(Some(name), &claims("alice")), NOW)
            .unwrap_or_else(|r| panic!("{name}: {} {}", r.code.as_str(), r.message));
        assert_eq!((verified.subject.as_str(), verified.issuer.as_str()), ("alice", ISSUER));
        assert_eq!(verified.expires_at, NOW + 3600);
        assert_eq!(verified.claims["scope"], "tts read");
    }
}

#[test]
fn a_signature_from_another_key_is_refused() {
    let trusted = Signer::es256();
    let auth = authenticator(vec![trusted.jwk(Some("k1"))]);
    let forged = Signer::es256().sign(Some("k1"), &claims("mallory"));
    let rejection = assert_refused(auth.verify(&forged, NOW), 401, "bad_signature");
    assert_eq!(
        challenge(&rejection),
        "Bearer realm=\"voxgate\", error=\"invalid_token\", error_description=\"the token signature is not valid\""
    );
    let hmac = authenticator(vec![Signer::hs256(HMAC_SECRET).jwk(None)]);
    let wrong_secret = Signer::hs256(b"another secret, also long enough....").sign(None, &claims("mallory"));
    assert_refused(hmac.verify(&wrong_secret, NOW), 401, "bad_signature");
}

#[test]
fn a_tampered_payload_is_refused() {
    let signer = Signer::ed25519();
    let auth = authenticator(vec![signer.jwk(Some("k1"))]);
    let token = signer.sign(Some("k1"), &claims("alice"));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_claims = b64(claims("admin").to_string().as_bytes());
    parts[1] = &forged_claims;
    assert_refused(auth.verify(&parts.join("."), NOW), 401, "bad_signature");
}

#[test]
fn validity_window_honours_the_clock_skew() {
    let signer = Signer::es256();
    let auth = authenticator(vec![signer.jwk(Some("k1"))]);
    let token = |changes: Value| signer.sign(Some("k1"), &claims_with("alice", changes));
    assert!(auth.verify(&token(json!({"exp": NOW - 59})), NOW).is_ok(), "within the 60 s skew");
    assert_refused(auth.verify(&token(json!({"exp": NOW - 61})), NOW), 401, "token_expired");
    assert!(auth.verify(&token(json!({"nbf": NOW + 59})), NOW).is_ok());
    assert_refused(auth.verify(&token(json!({"nbf": NOW + 61})), NOW), 401, "token_not_yet_valid");
    assert_refused(auth.verify(&token(json!({"iat": NOW + 61})), NOW), 401, "token_issued_in_future");
    assert_refused(auth.verify(&token(json!({"exp": null})), NOW), 401, "expiry_missing");
    assert_refused(auth.verify(&token(json!({"exp": "tomorrow"})), NOW), 401, "token_malformed");
    assert_eq!(auth.stats().signature_checks, 2, "time checks come before the signature");
}

#[test]
fn max_lifetime_bounds_exp_from_iat_else_nbf_else_now() {
    let signer = Signer::hs256(HMAC_SECRET);
    let mut dev = provider("dev", ISSUER, vec![signer.jwk(None)]);
    dev["max_lifetime_seconds"] = json!(3600);
    let auth = compile(json!({"providers": [dev]})).unwrap();
    let token = |changes: Value| signer.sign(None, &claims_with("alice", changes));
    let too_long = "token_lifetime_too_long";

    assert!(auth.verify(&token(json!({"iat": NOW - 100, "exp": NOW + 3500})), NOW).is_ok(), "exactly the bound");
    assert_refused(auth.verify(&token(json!({"iat": NOW - 100, "exp": NOW + 3501})), NOW), 401, too_long);
    assert_refused(auth.verify(&token(json!({"iat": 0, "exp": NOW + 60})), NOW), 401, too_long);
    assert_refused(auth.verify(&token(json!({"exp": 1e300})), NOW), 401, too_long);
    assert!(auth.verify(&token(json!({"iat": null, "nbf": NOW - 600, "exp": NOW + 3000})), NOW).is_ok());
    assert_refused(auth.verify(&token(json!({"iat": null, "nbf": NOW - 600, "exp": NOW + 3001})), NOW), 401, too_long);
    assert!(auth.verify(&token(json!({"iat": null, "nbf": null, "exp": NOW + 3600})), NOW).is_ok());
    assert_refused(auth.verify(&token(json!({"iat": null, "nbf": null, "exp": NOW + 3601})), NOW), 401, too_long);
    assert_refused(auth.verify(&token(json!({"exp": null})), NOW), 401, "expiry_missing");
    assert_eq!(auth.stats().signature_checks, 3, "the lifetime is judged before the signature");

    let cached = token(json!({"iat": null, "nbf": null, "exp": NOW + 3600}));
    assert!(auth.verify(&cached, NOW + 1800).is_ok(), "a cached token only gets closer to its expiry");

    let unbounded = compile(json!({"providers": [provider("dev", ISSUER, vec![signer.jwk(None)])]})).unwrap();
    assert!(unbounded.verify(&token(json!({"exp": 1e300})), NOW).is_ok(), "no bound unless configured");
}

#[test]
fn skew_is_configurable() {
    let signer = Signer::hs256(HMAC_SECRET);
    let config = json!({"providers": [provider("dev", ISSUER, vec![signer.jwk(None)])], "clock_skew_seconds": 0});
    let auth = compile(config).unwrap();
    let token = signer.sign(None, &claims_with("alice", json!({"exp": NOW - 1})));
    assert_refused(auth.verify(&token, NOW), 401, "token_expired");
}

#[test]
fn exp_may_be_optional_per_provider() {
    let signer = Signer::hs256(HMAC_SECRET);
    let mut dev = provider("dev", ISSUER, vec![signer.jwk(None)]);
    dev["require_exp"] = json!(false);
    let auth = compile(json!({"providers": [dev], "cache_ttl_seconds": 30})).unwrap();
    let token = signer.sign(None, &claims_with("alice", json!({"exp": null})));
    assert_eq!(auth.verify(&token, NOW).unwrap().expires_at, u64::MAX);
    assert!(auth.verify(&token, NOW + 30).is_ok());
    assert_eq!(auth.stats().signature_checks, 1, "cached for cache_ttl_seconds");
    assert!(auth.verify(&token, NOW + 31).is_ok());
    assert_eq!(auth.stats().signature_checks, 2, "re-verified once the TTL is over");
}

#[test]
fn issuer_selects_the_provider_and_unknown_issuers_are_refused() {
    let dev = Signer::es256();
    let corp = Signer::es256();
    let config = json!({"providers": [
        provider("dev", ISSUER, vec![dev.jwk(Some("same-kid"))]),
        provider("corp", "https://idp.example", vec![corp.jwk(Some("same-kid"))]),
    ]});
    let auth = compile(config).unwrap();
    let corp_token = corp.sign(Some("same-kid"), &claims_with("bob", json!({"iss": "https://idp.example"})));
    assert_eq!(auth.verify(&corp_token, NOW).unwrap().issuer, "https://idp.example");
    let corp_key_claiming_dev = corp.sign(Some("same-kid"), &claims("bob"));
    assert_refused(auth.verify(&corp_key_claiming_dev, NOW), 401, "bad_signature");
    let stranger = dev.sign(Some("same-kid"), &claims_with("bob", json!({"iss": "https://evil.example"})));
    assert_refused(auth.verify(&stranger, NOW), 401, "wrong_issuer");
    let no_issuer = dev.sign(Some("same-kid"), &claims_with("bob", json!({"iss": null})));
    assert_refused(auth.verify(&no_issuer, NOW), 401, "wrong_issuer");
    assert_eq!(auth.stats().signature_checks, 2);
}

#[test]
fn wrong_audience_is_forbidden_for_an_authentic_token() {
    let signer = Signer::es256();
    let auth = authenticator(vec![signer.jwk(Some("k1"))]);
    let token = signer.sign(Some("k1"), &claims_with("alice", json!({"aud": "billing"})));
    let rejection = assert_refused(auth.verify(&token, NOW), 403, "wrong_audience");
    assert_eq!(
        challenge(&rejection),
        "Bearer realm=\"voxgate\", error=\"insufficient_scope\", error_description=\"the token was not issued for this service\""
    );
    let listed = signer.sign(Some("k1"), &claims_with("alice", json!({"aud": ["billing", "other-service"]})));
    assert!(auth.verify(&listed, NOW).is_ok(), "one accepted audience in the array is enough");
    let none = signer.sign(Some("k1"), &claims_with("alice", json!({"aud": null})));
    assert_refused(auth.verify(&none, NOW), 403, "wrong_audience");
    let forged = Signer::es256().sign(Some("k1"), &claims_with("alice", json!({"aud": "billing"})));
    assert_refused(auth.verify(&forged, NOW), 401, "bad_signature");
}

#[test]
fn required_scopes_come_from_scope_or_scp() {
    let signer = Signer::hs256(HMAC_SECRET);
    let auth = authenticator(vec![signer.jwk(None)]);
    let token = |changes: Value| signer.sign(None, &claims_with("alice", changes));
    let rejection = assert_refused(auth.verify(&token(json!({"scope": "read write"})), NOW), 403, "insufficient_scope");
    assert_eq!(
        challenge(&rejection),
        "Bearer realm=\"voxgate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"tts\""
    );
    assert_refused(auth.verify(&token(json!({"scope": null})), NOW), 403, "insufficient_scope");
    assert_refused(auth.verify(&token(json!({"scope": "ttsx"})), NOW), 403, "insufficient_scope");
    assert!(auth.verify(&token(json!({"scope": null, "scp": ["read", "tts"]})), NOW).is_ok());
    assert!(auth.verify(&token(json!({"scope": null, "scp": "tts"})), NOW).is_ok());
}

#[test]
fn alg_none_is_refused_before_any_key_is_used() {
    let auth = authenticator(vec![Signer::es256().jwk(Some("k1"))]);
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
        let unsigned =
            format!("{}.{}.", b64(header.to_string().as_bytes()), b64(claims("root").to_string().as_bytes()));
        assert_refused(auth.verify(&unsigned, NOW), 401, "token_malformed");
        let with_signature = hand_made(&header, &claims("root"), b"x");
        assert_refused(auth.verify(&with_signature, NOW), 401, "algorithm_not_allowed");
    }
    assert_eq!(auth.stats().signature_checks, 0);
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = Signer::rs256();
    let auth = authenticator(vec![rsa.jwk(Some("rsa-1"))]);
    for public_bytes in rsa_public_encodings() {
        for header in [json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}), json!({"alg": "HS256", "typ": "JWT"})] {
            let tag = hs256_tag(&header, &claims("root"), &public_bytes);
            let token = hand_made(&header, &claims("root"), &tag);
            assert_refused(auth.verify(&token, NOW), 401, "algorithm_not_allowed");
        }
    }
    assert_eq!(auth.stats().signature_checks, 0);
    assert!(auth.verify(&rsa.sign(Some("rsa-1"), &claims("alice")), NOW).is_ok());
}

#[test]
fn the_jwk_alg_narrows_what_a_key_verifies() {
    let rs = Signer::rs256();
    let ps = Signer::ps256();
    let mut jwk = rs.jwk(Some("rsa"));
    jwk["alg"] = json!("RS256");
    let auth = authenticator(vec![jwk]);
    assert!(auth.verify(&rs.sign(Some("rsa"), &claims("alice")), NOW).is_ok());
    assert_refused(auth.verify(&ps.sign(Some("rsa"), &claims("alice")), NOW), 401, "algorithm_not_allowed");

    let p256 = Signer::es256();
    let auth = authenticator(vec![p256.jwk(Some("ec"))]);
    let es384_header = json!({"alg": "ES384", "typ": "JWT", "kid": "ec"});
    let token = hand_made(&es384_header, &claims("alice"), &[1u8; 96]);
    assert_refused(auth.verify(&token, NOW), 401, "algorithm_not_allowed");
}

#[test]
fn unknown_kid_is_refused_without_crypto() {
    let signer = Signer::es256();
    let auth = authenticator(vec![signer.jwk(Some("k1"))]);
    let rejection = assert_refused(auth.verify(&signer.sign(Some("k2"), &claims("alice")), NOW), 401, "unknown_key");
    assert!(challenge(&rejection).contains("error=\"invalid_token\""));
    assert_eq!(auth.stats().signature_checks, 0);
}

#[test]
fn a_token_without_kid_tries_the_keys_of_its_algorithm() {
    let first = Signer::es256();
    let second = Signer::es256();
    let auth = authenticator(vec![Signer::hs256(HMAC_SECRET).jwk(None), first.jwk(None), second.jwk(None)]);
    assert!(auth.verify(&second.sign(None, &claims("alice")), NOW).is_ok());
    assert_eq!(auth.stats().signature_checks, 1);
}

#[test]
fn malformed_tokens_are_refused_before_crypto() {
    let signer = Signer::hs256(HMAC_SECRET);
    let auth = authenticator(vec![signer.jwk(None)]);
    let good = signer.sign(None, &claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let payload = b64(claims("alice").to_string().as_bytes());
    let cases = [
        parts[..2].join("."),
        format!("{good}.extra"),
        format!("{}.{}.{}", parts[0], "***", parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
        format!("{}.{}.{}", parts[0], b64(br#"{"sub":"a","sub":"b"}"#), parts[2]),
        format!("{}.{payload}.{}", b64(br#"{"alg":"HS256","crit":["b64"],"b64":false}"#), parts[2]),
        format!("{}.{payload}.{}", b64(br#"{"alg":"HS256","typ":"JWE"}"#), parts[2]),
        format!("{}.{payload}.{}", b64(br#"{"typ":"JWT"}"#), parts[2]),
        signer.sign(None, &claims_with("alice", json!({"aud": 7}))),
        String::from("...."),
    ];
    for token in &cases {
        let rejection = refusal(auth.verify(token, NOW));
        assert_eq!((rejection.status(), rejection.code.as_str()), (401, "token_malformed"), "{token}");
    }
    let subjectless = signer.sign(None, &claims_with("alice", json!({"sub": null})));
    assert_refused(auth.verify(&subjectless, NOW), 401, "subject_missing");
    assert_eq!(auth.stats().signature_checks, 1, "only the audience case reaches a signature check");
}

#[test]
fn subjects_the_forwarded_header_would_alter_are_refused() {
    let signer = Signer::hs256(HMAC_SECRET);
    let auth = authenticator(vec![signer.jwk(None)]);
    let unsafe_subjects = [
        "alice\r\nx-voxgate-plan: pro",
        "alice\u{0}",
        " alice",
        "alice\t",
        &"s".repeat(257),
        "alice\u{202E}nimda",
        "alice\u{2028}voxgate: refused reason=none",
        "alice\u{2029}",
        "ad\u{200B}min",
        "\u{2066}alice\u{2069}",
        "alice\u{FEFF}",
        "alice\u{85}",
    ];
    for subject in unsafe_subjects {
        let token = signer.sign(None, &claims(subject));
        let rejection = assert_refused(auth.verify(&token, NOW), 401, "token_malformed");
        assert!(!rejection.message.contains("alice"), "the subject is not echoed");
    }
    for subject in ["alice", "user@example.com", "ålice", "名前", "a b", &"s".repeat(256)] {
        let verified = auth.verify(&signer.sign(None, &claims(subject)), NOW).expect("a plain subject");
        assert_eq!(verified.forwarded[0].1, subject, "forwarded unchanged");
    }
}

#[test]
fn oversized_tokens_are_refused_first() {
    let signer = Signer::hs256(HMAC_SECRET);
    let config = json!({"providers": [provider("dev", ISSUER, vec![signer.jwk(None)])], "max_token_bytes": 512});
    let auth = compile(config).unwrap();
    let padded = signer.sign(None, &claims_with("alice", json!({"padding": "x".repeat(600)})));
    assert_refused(auth.verify(&padded, NOW), 401, "token_too_large");
    assert_eq!(auth.cache_stats(), (0, 0), "refused before the cache is even consulted");
    assert!(auth.verify(&signer.sign(None, &claims("alice")), NOW).is_ok());
}

#[test]
fn duplicate_authorization_headers_are_ambiguous() {
    let auth = authenticator(vec![Signer::hs256(HMAC_SECRET).jwk(None)]);
    let headers = vec![
        ("authorization".to_string(), "Bearer a.b.c".to_string()),
        ("authorization".to_string(), "Bearer d.e.f".to_string()),
    ];
    let rejection = auth.token_from_headers(&headers).unwrap_err();
    assert_eq!((rejection.status(), rejection.code.as_str()), (401, "token_ambiguous"));
    assert!(challenge(&rejection).contains("error=\"invalid_request\""));
    assert_eq!(auth.token_from_headers(&[]).unwrap(), None);
    let missing = token_missing();
    assert_eq!((missing.status(), challenge(&missing)), (401, "Bearer realm=\"voxgate\""));
}

#[test]
fn configured_token_header_is_read_too() {
    let signer = Signer::hs256(HMAC_SECRET);
    let config = json!({"providers": [provider("dev", ISSUER, vec![signer.jwk(None)])], "token_header": "X-Api-Token"});
    let auth = compile(config).unwrap();
    let token = signer.sign(None, &claims("alice"));
    let headers = vec![("x-api-token".to_string(), token.clone())];
    assert_eq!(auth.token_from_headers(&headers).unwrap(), Some(token.clone()));
    let both =
        vec![("x-api-token".to_string(), token.clone()), ("authorization".to_string(), format!("Bearer {token}"))];
    assert_eq!(auth.token_from_headers(&both).unwrap_err().code.as_str(), "token_ambiguous");
}

#[test]
fn a_cache_hit_skips_the_signature_and_still_honours_exp() {
    let signer = Signer::es256();
    let auth = authenticator(vec![signer.jwk(Some("k1"))]);
    let token = signer.sign(Some("k1"), &claims_with("alice", json!({"exp": NOW + 100})));
    let first = auth.verify(&token, NOW).unwrap();
    for later in 1..=5 {
        assert_eq!(auth.verify(&token, NOW + later).unwrap(), first);
    }
    assert_eq!(auth.stats(), AuthStats { cache_hits: 5, cache_misses: 1, cache_entries: 1, signature_checks: 1 });
    assert!(auth.verify(&token, NOW + 160).is_ok(), "exp + skew is still inside the window");
    assert_refused(auth.verify(&token, NOW + 161), 401, "token_expired");
    assert_eq!(auth.stats().signature_checks, 1);
    assert_eq!(auth.stats().cache_entries, 0, "the expired entry is gone");
}

#[test]
fn cached_tokens_are_still_held_to_audience_and_scope() {
    let signer = Signer::hs256(HMAC_SECRET);
    let auth = authenticator(vec![signer.jwk(None)]);
    let token = signer.sign(None, &claims_with("alice", json!({"scope": "read"})));
    for _ in 0..3 {
        assert_refused(auth.verify(&token, NOW), 403, "insufficient_scope");
    }
    assert_eq!(auth.stats().signature_checks, 1, "an authentic token is verified once, then judged from the cache");
}

#[test]
fn a_flood_of_distinct_tokens_never_grows_the_cache_beyond_its_bound() {
    let signer = Signer::hs256(HMAC_SECRET);
    let config = json!({"providers": [provider("dev", ISSUER, vec![signer.jwk(None)])], "cache_entries": 8});
    let auth = compile(config).unwrap();
    let tokens: Vec<String> = (0..80).map(|i| signer.sign(None, &claims(&format!("user-{i}")))).collect();
    for token in &tokens {
        auth.verify(token, NOW).unwrap();
        assert!(auth.stats().cache_entries <= 8);
    }
    assert_eq!(auth.stats().cache_entries, 8);
    auth.verify(&tokens[79], NOW).unwrap();
    auth.verify(&tokens[0], NOW).unwrap();
    let stats = auth.stats();
    assert_eq!((stats.cache_hits, stats.signature_checks), (1, 81), "newest kept, oldest evicted");
}

fn remote_config() -> Value {
    json!({"providers": [{
        "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "remote_jwks": {"cluster": "jwks", "authority": "idp.example", "path": "/.well-known/jwks.json",
                        "refresh_seconds": 300, "timeout_ms": 2000}
    }]})
}

fn jwks_body(keys: Vec<Value>) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

#[test]
fn remote_provider_fails_closed_until_keys_arrive_then_rotates() {
    let auth = compile(remote_config()).unwrap();
    let old = Signer::es256();
    let new = Signer::ed25519();
    let old_token = old.sign(Some("old"), &claims("alice"));
    assert_refused(auth.verify(&old_token, NOW), 401, "keys_unavailable");

    let due = auth.due_jwks_fetches(NOW);
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].cluster.as_str(), due[0].path.as_str(), due[0].timeout_ms),
        ("jwks", "/.well-known/jwks.json", 2000)
    );
    assert!(auth.due_jwks_fetches(NOW + 1).is_empty(), "in flight");
    assert_eq!(auth.update_jwks("corp", &jwks_body(vec![old.jwk(Some("old"))])), Ok(1));
    assert_eq!(auth.remote_jwks()[0].next_fetch_s, NOW + 300);
    assert!(auth.remote_jwks()[0].has_keys);
    assert!(auth.verify(&old_token, NOW + 2).is_ok());

    let new_token = new.sign(Some("new"), &claims("alice"));
    assert_refused(auth.verify(&new_token, NOW + 10), 401, "unknown_key");
    assert_eq!(auth.remote_jwks()[0].next_fetch_s, NOW + 30, "an unknown kid brings the refresh forward");
    assert_eq!(auth.due_jwks_fetches(NOW + 30).len(), 1);
    assert_eq!(auth.update_jwks("corp", &jwks_body(vec![new.jwk(Some("new"))])), Ok(1));
    assert!(auth.verify(&new_token, NOW + 31).is_ok());
    assert_refused(auth.verify(&old_token, NOW + 31), 401, "unknown_key");
    assert_eq!(auth.stats().cache_entries, 1, "tokens of the withdrawn key left the cache");
}

#[test]
fn an_unchanged_key_set_keeps_the_cache() {
    let auth = compile(remote_config()).unwrap();
    let signer = Signer::es256();
    let body = jwks_body(vec![signer.jwk(Some("k1"))]);
    auth.due_jwks_fetches(NOW);
    auth.update_jwks("corp", &body).unwrap();
    let token = signer.sign(Some("k1"), &claims("alice"));
    auth.verify(&token, NOW).unwrap();
    auth.due_jwks_fetches(NOW + 300);
    auth.update_jwks("corp", &body).unwrap();
    auth.verify(&token, NOW + 301).unwrap();
    assert_eq!(auth.stats().signature_checks, 1);
}

#[test]
fn a_bad_jwks_keeps_the_last_good_keys() {
    let auth = compile(remote_config()).unwrap();
    let signer = Signer::es256();
    auth.due_jwks_fetches(NOW);
    auth.update_jwks("corp", &jwks_body(vec![signer.jwk(Some("k1"))])).unwrap();
    let mut encryption_key = Signer::es256().jwk(Some("enc"));
    encryption_key["use"] = json!("enc");
    let garbage: [&[u8]; 5] = [
        b"<html>502</html>",
        b"{\"keys\": []}",
        b"{\"no_keys\": 1}",
        &jwks_body(vec![encryption_key.clone()]),
        &jwks_body(vec![json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"})]),
    ];
    for (i, body) in garbage.iter().enumerate() {
        auth.due_jwks_fetches(NOW + 1000 * (i as u64 + 1));
        assert!(auth.update_jwks("corp", body).is_err());
    }
    let long_lived = claims_with("alice", json!({"exp": NOW + 10_000}));
    assert!(auth.verify(&signer.sign(Some("k1"), &long_lived), NOW + 6000).is_ok());
    assert_eq!(auth.remote_jwks()[0].next_fetch_s, NOW + 5000 + 16, "failures back off");

    auth.due_jwks_fetches(NOW + 6016);
    let mixed = jwks_body(vec![encryption_key, signer.jwk(Some("k1"))]);
    assert_eq!(auth.update_jwks("corp", &mixed), Ok(1), "unusable keys in a fetched set are skipped");
    assert!(auth.update_jwks("nobody", &mixed).is_err());
}

#[test]
fn http_failures_retry_sooner() {
    let auth = compile(remote_config()).unwrap();
    auth.due_jwks_fetches(NOW);
    auth.note_fetch_failed("corp", NOW + 1);
    assert_eq!(auth.remote_jwks()[0].next_fetch_s, NOW + 2);
    assert!(auth.remote_jwks()[0].is_due(NOW + 2));
    assert!(!auth.remote_jwks()[0].has_keys);
}

#[test]
fn forwarded_headers_carry_subject_issuer_and_chosen_claims() {
    let signer = Signer::hs256(HMAC_SECRET);
    let config = json!({
        "providers": [provider("dev", ISSUER, vec![signer.jwk(None)])],
        "forward_claims": {"plan": "x-voxgate-plan", "email": "X-Voxgate-Email"}
    });
    let auth = compile(config).unwrap();
    let verified = auth.verify(&signer.sign(None, &claims_with("alice", json!({"plan": "pro"}))), NOW).unwrap();
    assert_eq!(
        verified.forwarded,
        vec![
            ("x-voxgate-subject".to_string(), "alice".to_string()),
            ("x-voxgate-issuer".to_string(), ISSUER.to_string()),
            ("x-voxgate-plan".to_string(), "pro".to_string()),
        ]
    );
}

#[test]
fn inline_jwks_problems_name_the_member() {
    let rsa = Signer::rs256().jwk(Some("r"));
    let cases: Vec<(Value, &str)> = vec![
        (json!([rsa.clone(), {"kty": "RSA", "n": "!!", "e": "AQAB"}]), "keys[1].n"),
        (json!([{"kty": "RSA", "n": rsa["n"], "e": "Aw"}]), "keys[0].e"),
        (json!([{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]), "keys[0].n"),
        (json!([{"kty": "RSA", "n": rsa["n"], "e": "AQAB", "d": "AQAB"}]), "keys[0].d"),
        (json!([{"kty": "RSA", "n": rsa["n"], "e": "AQAB", "alg": "HS256"}]), "keys[0].alg"),
        (json!([{"kty": "RSA", "n": rsa["n"], "e": "AQAB", "alg": "none"}]), "keys[0].alg"),
        (json!([{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]), "keys[0].crv"),
        (json!([{"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32])}]), "keys[0].x"),
        (json!([{"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[1; 32])}]), "keys[0].x"),
        (json!([{"kty": "oct", "k": b64(b"short")}]), "keys[0].k"),
        (json!([{"kty": "oct", "k": b64(&[7; 40]), "alg": "HS512"}]), "keys[0].k"),
        (json!([{"kty": "OKP", "crv": "X25519", "x": b64(&[1; 32])}]), "keys[0].crv"),
        (json!([{"kty": "RSA", "n": rsa["n"], "e": "AQAB", "use": "enc"}]), "keys[0].use"),
        (json!([{"kty": "PQ"}]), "keys[0].kty"),
        (json!([]), "keys"),
    ];
    for (keys, member) in cases {
        let config =
            json!({"providers": [{"name": "dev", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": keys}}]});
        let error = compile(config).err().expect("invalid JWKS");
        assert_eq!(error.field, format!("auth.providers[0].jwks.{member}"), "{}", error.message);
    }
}

#[test]
fn configuration_problems_name_the_field() {
    let jwks = json!({"keys": [Signer::hs256(HMAC_SECRET).jwk(None)]});
    let good = json!({"name": "dev", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks});
    let with = |changes: Value| {
        let mut config = json!({"providers": [good.clone()]});
        for (name, value) in changes.as_object().unwrap() {
            config[name] = value.clone();
        }
        config
    };
    let remote = |field: &str, value: Value| {
        let mut p = json!({"name": "corp", "issuer": "i", "audiences": ["a"],
            "remote_jwks": {"cluster": "jwks", "authority": "idp", "path": "/jwks"}});
        p["remote_jwks"][field] = value;
        json!({"providers": [p]})
    };
    let mut second = good.clone();
    second["name"] = json!("other");
    let cases = vec![
        (json!({"providers": []}), "auth.providers"),
        (with(json!({"providers": [good.clone(), good.clone()]})), "auth.providers[1].name"),
        (with(json!({"providers": [good.clone(), second]})), "auth.providers[1].issuer"),
        (
            json!({"providers": [{"name": "dev", "issuer": "", "audiences": ["a"], "jwks": jwks}]}),
            "auth.providers[0].issuer",
        ),
        (
            json!({"providers": [{"name": "dev", "issuer": "i", "audiences": [], "jwks": jwks}]}),
            "auth.providers[0].audiences",
        ),
        (
            json!({"providers": [{"name": "dev", "issuer": "i", "audiences": ["a", ""], "jwks": jwks}]}),
            "auth.providers[0].audiences[1]",
        ),
        (
            json!({"providers": [{"name": "bad name", "issuer": "i", "audiences": ["a"], "jwks": jwks}]}),
            "auth.providers[0].name",
        ),
        (json!({"providers": [{"name": "dev", "issuer": "i", "audiences": ["a"]}]}), "auth.providers[0]"),
        (remote("cluster", json!("")), "auth.providers[0].remote_jwks.cluster"),
        (remote("authority", json!("")), "auth.providers[0].remote_jwks.authority"),
        (remote("path", json!("jwks")), "auth.providers[0].remote_jwks.path"),
        (remote("refresh_seconds", json!(1)), "auth.providers[0].remote_jwks.refresh_seconds"),
        (remote("timeout_ms", json!(0)), "auth.providers[0].remote_jwks.timeout_ms"),
        (
            json!({"providers": [{"name": "dev", "issuer": "i", "audiences": ["a"], "jwks": jwks, "max_lifetime_seconds": 0}]}),
            "auth.providers[0].max_lifetime_seconds",
        ),
        (
            json!({"providers": [{"name": "dev", "issuer": "i", "audiences": ["a"], "jwks": jwks,
                                  "require_exp": false, "max_lifetime_seconds": 3600}]}),
            "auth.providers[0].max_lifetime_seconds",
        ),
        (
            json!({"providers": [{"name": "dev", "issuer": "https://idp\u{202E}", "audiences": ["a"], "jwks": jwks}]}),
            "auth.providers[0].issuer",
        ),
        (
            json!({"providers": [{"name": "mesh", "issuer": "i", "audiences": ["a"], "jwks": jwks,
                                  "jwt_authn": {"payload_in_metadata": "i"}}]}),
            "auth.providers[0]",
        ),
        (
            json!({"providers": [{"name": "mesh", "issuer": "i", "audiences": ["a"],
                                  "jwt_authn": {"payload_in_metadata": ""}}]}),
            "auth.providers[0].jwt_authn.payload_in_metadata",
        ),
        (
            json!({"providers": [
                {"name": "a", "issuer": "i", "audiences": ["a"], "jwt_authn": {"payload_in_metadata": "p"}},
                {"name": "b", "issuer": "j", "audiences": ["a"], "jwt_authn": {"payload_in_metadata": "p"}}]}),
            "auth.providers[1].jwt_authn.payload_in_metadata",
        ),
        (with(json!({"clock_skew_seconds": 3601})), "auth.clock_skew_seconds"),
        (with(json!({"cache_entries": 0})), "auth.cache_entries"),
        (with(json!({"cache_ttl_seconds": 0})), "auth.cache_ttl_seconds"),
        (with(json!({"max_token_bytes": 10})), "auth.max_token_bytes"),
        (with(json!({"token_header": "bad header"})), "auth.token_header"),
        (with(json!({"token_header": "x-voxgate-token"})), "auth.token_header"),
        (with(json!({"required_scopes": ["tts", "two words"]})), "auth.required_scopes[1]"),
        (with(json!({"forward_claims": {"plan": "x-plan"}})), "auth.forward_claims.plan"),
        (with(json!({"forward_claims": {"sub": "x-voxgate-subject"}})), "auth.forward_claims.sub"),
        (with(json!({"failed_auth": {"capacity": 0, "refill_per_second": 1.0}})), "auth.failed_auth.capacity"),
        (with(json!({"failed_auth": {"capacity": 5, "refill_per_second": 0.0}})), "auth.failed_auth.refill_per_second"),
    ];
    for (config, field) in cases {
        let error = compile(config).err().expect("invalid configuration");
        assert_eq!(error.field, field, "{}", error.message);
    }
}

#[test]
fn defaults_and_failed_auth_limit() {
    let jwks = json!({"keys": [Signer::hs256(HMAC_SECRET).jwk(None)]});
    let auth =
        compile(json!({"providers": [{"name": "dev", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}]}))
            .unwrap();
    assert_eq!(auth.failed_auth_limit(), Some(FailedAuthLimit { capacity: 20, refill_per_second: 1.0, refuse_before_verification: false }));
    assert!(auth.remote_jwks().is_empty());
    let disabled = json!({"providers": [{"name": "dev", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}], "failed_auth": null});
    assert_eq!(compile(disabled).unwrap().failed_auth_limit(), None);
    let unknown = json!({"providers": [], "cache_size": 1});
    assert!(serde_json::from_value::<AuthConfig>(unknown).is_err(), "unknown fields are refused");
}


/// The order of P-256, big-endian.
const P256_ORDER: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6, 0xFA,
    0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// n − s for a big-endian 32-byte `s` below the order.
fn p256_negate(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut digit = i16::from(P256_ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(digit < 0);
        if digit < 0 {
            digit += 256;
        }
        out[i] = digit as u8;
    }
    out
}

/// Both forms of an ECDSA signature verify (`s` and `n − s`), and the filter accepts both on
/// purpose: issuers built on OpenSSL or Java sign with either form (about half of the dev
/// tokens carry the high one), so a low-`s` rule would refuse half of their genuine tokens.
/// The twin of a token buys its holder nothing: it carries the same claims, so the same
/// subject, plan and buckets, and costs one more signature check counted as a success.
#[test]
fn an_ecdsa_signature_in_its_other_form_is_the_same_identity() {
    let signer = Signer::es256();
    let auth = authenticator(vec![signer.jwk(Some("ec"))]);
    let token = signer.sign(Some("ec"), &claims("alice"));
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature = jwks::decode_base64url(signature).unwrap();
    let twin_signature = [&signature[..32], &p256_negate(&signature[32..])].concat();
    let twin = format!("{signed}.{}", test_keys::b64(&twin_signature));
    assert_ne!(twin, token);
    let original = auth.verify(&token, NOW).expect("the token verifies");
    let other = auth.verify(&twin, NOW).expect("its twin verifies too");
    assert_eq!((&other.subject, &other.forwarded), (&original.subject, &original.forwarded));
    assert_eq!(auth.stats().signature_checks, 2);
}
