//! The signature check, the only expensive step: tries the chosen keys in turn and maps
//! jwt-simple's errors onto refusal codes.

use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;

use super::jwks::Verifier;
use super::reject;
use crate::decision::{Code, Rejection};

/// Verifies `token` with the first candidate that accepts it. jwt-simple re-checks the header
/// and time claims with the same clock and skew, so both readings of the token agree.
pub(crate) fn check_signature(
    candidates: &[&Verifier],
    token: &str,
    now_s: u64,
    skew_s: u64,
    max_token_bytes: usize,
) -> Result<(), Rejection> {
    let options = VerificationOptions {
        time_tolerance: Some(Duration::from_secs(skew_s)),
        artificial_time: Some(UnixTimeStamp::from_secs(now_s)),
        max_token_length: Some(max_token_bytes),
        ..VerificationOptions::default()
    };
    for verifier in candidates {
        let Err(error) = verifier.verify(token, options.clone()) else { return Ok(()) };
        match error.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => continue,
            Some(JWTError::TokenHasExpired) => {
                return Err(reject::invalid_token(Code::TokenExpired, "the token has expired"));
            }
            Some(JWTError::TokenNotValidYet) => {
                return Err(reject::invalid_token(Code::TokenNotYetValid, "the token is not valid yet"));
            }
            Some(JWTError::ClockDrift) => {
                return Err(reject::invalid_token(Code::TokenIssuedInFuture, "the token was issued in the future"));
            }
            _ => return Err(reject::invalid_token(Code::TokenMalformed, "the token could not be decoded")),
        }
    }
    Err(reject::invalid_token(Code::BadSignature, "the token signature is not valid"))
}
