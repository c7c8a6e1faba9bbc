//! Token claims as tests and measurements sign them.

use jwt_simple::prelude::JWTClaims;
use serde_json::{Map, Value};

/// jwt-simple claims carrying exactly the members of `claims`, so tests control every one
/// of them (jwt-simple would otherwise add its own `iat`/`exp`).
pub fn raw_claims(claims: &Value) -> JWTClaims<Map<String, Value>> {
    JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom: claims.as_object().expect("claims object").clone(),
    }
}

