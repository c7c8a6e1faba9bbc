//! The token path on structured tokens: JOSE headers and claim sets built from the input
//! (every algorithm name, known and unknown key ids, `typ`/`crit`, time claims as integers,
//! floats, negatives, strings and huge values, audiences and scopes of every shape, claims
//! with control characters) and signed with a configured secret, a wrong one, or mangled
//! after signing. Duplicate members are produced as raw JSON text.
//!
//! Judged as in `filter_token`, and the cache must not change a decision: a token verified
//! once is accepted again at the same time and refused once expired.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use voxgate_filter::auth::Authenticator;
use voxgate_fuzz::jwt;

#[derive(Arbitrary, Debug)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Ps256,
    Es256,
    Es384,
    EdDsa,
    Ed25519,
    None,
    NoneUpper,
    Missing,
    NotAString(i32),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Missing,
    Dev,
    Public(u8),
    Other(String),
    NotAString(bool),
}

#[derive(Arbitrary, Debug)]
enum Issuer {
    Dev,
    Lax,
    Remote,
    Missing,
    Other(String),
    NotAString(u32),
}

#[derive(Arbitrary, Debug)]
enum Time {
    Missing,
    Relative(i32),
    Absolute(u64),
    Float(f64),
    Negative(i64),
    Text(String),
    Null,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Missing,
    Given(String),
    Empty,
    Number(i64),
    List(Vec<String>),
    Object,
}

#[derive(Arbitrary, Debug)]
enum Key {
    Dev,
    Lax,
    Wrong(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Mangle {
    Nothing,
    AppendToSignature(u8),
    FlipSignatureBit(u16),
    DropSignature,
    DuplicateClaim(String),
    DuplicateHeaderAlg,
    ExtraSegment,
    PaddedSegments,
}

#[derive(Arbitrary, Debug)]
struct Token {
    alg: Alg,
    kid: Kid,
    typ: Option<String>,
    crit: Option<Vec<String>>,
    iss: Issuer,
    sub: Text,
    aud: Text,
    exp: Time,
    nbf: Time,
    iat: Time,
    scope: Text,
    scp: Text,
    plan: Text,
    email: Text,
    extra: Vec<(String, String)>,
    key: Key,
    mangle: Mangle,
}

#[derive(Arbitrary, Debug)]
struct Input {
    tokens: Vec<Token>,
    /// Seconds the clock moves between tokens.
    steps: Vec<u16>,
}

fuzz_target!(|input: Input| {
    let authenticator = jwt::authenticator();
    let mut now_s = jwt::NOW_S;
    for (index, token) in input.tokens.iter().take(8).enumerate() {
        now_s += u64::from(input.steps.get(index).copied().unwrap_or(0));
        let compact = build(token, now_s);
        judge(&authenticator, &compact, now_s);
    }
});

fn time(t: &Time, now_s: u64) -> Option<Value> {
    Some(match t {
        Time::Missing => return None,
        Time::Relative(delta) => Value::from(now_s as i64 + i64::from(*delta)),
        Time::Absolute(v) => Value::from(*v),
        Time::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Time::Negative(v) => Value::from(-(v.unsigned_abs() as i128).min(i64::MAX as i128) as i64),
        Time::Text(s) => Value::from(s.as_str()),
        Time::Null => Value::Null,
    })
}

fn text(t: &Text) -> Option<Value> {
    Some(match t {
        Text::Missing => return None,
        Text::Given(s) => Value::from(s.as_str()),
        Text::Empty => Value::from(""),
        Text::Number(n) => Value::from(*n),
        Text::List(items) => Value::from(items.clone()),
        Text::Object => Value::Object(Map::new()),
    })
}

fn build(t: &Token, now_s: u64) -> String {
    let mut header = Map::new();
    let alg = match &t.alg {
        Alg::Hs256 => Some(Value::from("HS256")),
        Alg::Hs384 => Some(Value::from("HS384")),
        Alg::Hs512 => Some(Value::from("HS512")),
        Alg::Rs256 => Some(Value::from("RS256")),
        Alg::Ps256 => Some(Value::from("PS256")),
        Alg::Es256 => Some(Value::from("ES256")),
        Alg::Es384 => Some(Value::from("ES384")),
        Alg::EdDsa => Some(Value::from("EdDSA")),
        Alg::Ed25519 => Some(Value::from("Ed25519")),
        Alg::None => Some(Value::from("none")),
        Alg::NoneUpper => Some(Value::from("NONE")),
        Alg::Missing => None,
        Alg::NotAString(n) => Some(Value::from(*n)),
        Alg::Other(s) => Some(Value::from(s.as_str())),
    };
    if let Some(alg) = alg {
        header.insert("alg".into(), alg);
    }
    match &t.kid {
        Kid::Missing => {}
        Kid::Dev => {
            header.insert("kid".into(), Value::from(jwt::DEV_KID));
        }
        Kid::Public(i) => {
            header.insert(
                "kid".into(),
                Value::from(["rs", "es", "ed"][usize::from(*i % 3)]),
            );
        }
        Kid::Other(s) => {
            header.insert("kid".into(), Value::from(s.as_str()));
        }
        Kid::NotAString(b) => {
            header.insert("kid".into(), Value::from(*b));
        }
    }
    if let Some(typ) = &t.typ {
        header.insert("typ".into(), Value::from(typ.as_str()));
    }
    if let Some(crit) = &t.crit {
        header.insert("crit".into(), Value::from(crit.clone()));
    }

    let mut claims = Map::new();
    let iss = match &t.iss {
        Issuer::Dev => Some(Value::from(jwt::DEV_ISSUER)),
        Issuer::Lax => Some(Value::from(jwt::LAX_ISSUER)),
        Issuer::Remote => Some(Value::from(jwt::REMOTE_ISSUER)),
        Issuer::Missing => None,
        Issuer::Other(s) => Some(Value::from(s.as_str())),
        Issuer::NotAString(n) => Some(Value::from(*n)),
    };
    let named = [
        ("iss", iss),
        ("sub", text(&t.sub)),
        ("aud", text(&t.aud)),
        ("exp", time(&t.exp, now_s)),
        ("nbf", time(&t.nbf, now_s)),
        ("iat", time(&t.iat, now_s)),
        ("scope", text(&t.scope)),
        ("scp", text(&t.scp)),
        ("plan", text(&t.plan)),
        ("email", text(&t.email)),
    ];
    for (name, value) in named {
        if let Some(value) = value {
            claims.insert(name.into(), value);
        }
    }
    for (name, value) in t.extra.iter().take(4) {
        claims
            .entry(name.clone())
            .or_insert_with(|| Value::from(value.as_str()));
    }

    let mut header_json = Value::Object(header).to_string();
    let mut claims_json = Value::Object(claims).to_string();
    match &t.mangle {
        Mangle::DuplicateClaim(name) => {
            let name = ["sub", "iss", "exp", "aud"]
                .iter()
                .find(|n| name.starts_with(**n))
                .copied()
                .unwrap_or("sub");
            claims_json = format!(
                "{{\"{name}\":\"shadow\",{}",
                claims_json.trim_start_matches('{')
            );
        }
        Mangle::DuplicateHeaderAlg => {
            header_json = format!("{{\"alg\":\"none\",{}", header_json.trim_start_matches('{'));
        }
        _ => {}
    }
    let secret: &[u8] = match &t.key {
        Key::Dev => jwt::DEV_SECRET,
        Key::Lax => jwt::LAX_SECRET,
        Key::Wrong(bytes) => bytes,
    };
    let token = jwt::sign_hs256(header_json.as_bytes(), claims_json.as_bytes(), secret);
    match &t.mangle {
        Mangle::AppendToSignature(b) => format!("{token}{}", char::from(b'A' + b % 26)),
        Mangle::FlipSignatureBit(bit) => {
            let (input, signature) = token.rsplit_once('.').unwrap_or((&token, ""));
            let mut bytes = signature.as_bytes().to_vec();
            if !bytes.is_empty() {
                let at = usize::from(*bit / 8) % bytes.len();
                bytes[at] ^= 1 << (bit % 8);
            }
            format!("{input}.{}", String::from_utf8_lossy(&bytes))
        }
        Mangle::DropSignature => format!(
            "{}.",
            token
                .rsplit_once('.')
                .map_or(token.as_str(), |(input, _)| input)
        ),
        Mangle::ExtraSegment => format!("{token}.e30"),
        Mangle::PaddedSegments => token
            .split('.')
            .map(|s| format!("{s}=="))
            .collect::<Vec<_>>()
            .join("."),
        _ => token,
    }
}

/// The shared judgement, and then: the cache never keeps an expired token alive.
fn judge(authenticator: &Authenticator, token: &str, now_s: u64) {
    let Some(verified) = jwt::check_verification(authenticator, token, now_s) else {
        return;
    };
    if verified.expires_at < u64::MAX - jwt::CLOCK_SKEW_S - 1 {
        let late = verified.expires_at + jwt::CLOCK_SKEW_S + 1;
        let refused = authenticator
            .verify(token, late)
            .expect_err("the cache kept an expired token alive");
        assert_eq!(refused.code, "token_expired");
    }
}
