//! The `stats_tags` Envoy is deployed with (`envoy/envoy.yaml.in`) turn every metric name the
//! filter defines into its Prometheus name and labels (the table in `filter/src/metrics.rs`).
//! Envoy applies each tag's regex to the full name, keeps the second group as the label value
//! and removes what the first group matched.

use std::fs;
use std::path::Path;

use regex_lite::Regex;

/// `(tag name, regex)` of every entry under `stats_tags:` in the shipped bootstrap.
fn deployed_stats_tags() -> Vec<(String, Regex)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/envoy.yaml.in");
    let yaml = fs::read_to_string(&path).unwrap();
    let section = yaml.split("\n  stats_tags:\n").nth(1).expect("the bootstrap has stats_tags");
    let mut tags = Vec::new();
    let mut name = None;
    for line in section.lines().take_while(|l| l.starts_with("    ")) {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(value) = line.strip_prefix("tag_name: ") {
            name = Some(value.to_string());
        } else if let Some(value) = line.strip_prefix("regex: ") {
            // A YAML single-quoted scalar: backslashes are literal, '' is a quote.
            let pattern = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).expect("single-quoted regex");
            let regex = Regex::new(&pattern.replace("''", "'")).unwrap();
            tags.push((name.take().expect("tag_name before regex"), regex));
        }
    }
    tags
}

/// The Prometheus name and labels Envoy makes of a metric name.
fn prometheus(name: &str, tags: &[(String, Regex)]) -> (String, Vec<(String, String)>) {
    let mut remaining = name.to_string();
    let mut labels = Vec::new();
    for (tag, regex) in tags {
        if let Some(captures) = regex.captures(name) {
            if let (Some(whole), Some(value)) = (captures.get(1), captures.get(2)) {
                labels.push((tag.clone(), value.as_str().to_string()));
                remaining = remaining.replacen(whole.as_str(), "", 1);
            }
        }
    }
    let stripped = remaining.strip_prefix("wasmcustom.").unwrap_or(&remaining);
    labels.sort();
    (stripped.replace('.', "_"), labels)
}

#[test]
fn every_metric_name_gets_its_prometheus_name_and_labels() {
    let tags = deployed_stats_tags();
    assert_eq!(tags.len(), 6, "{tags:?}");
    let label = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut labels: Vec<_> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.sort();
        labels
    };
    let cases: [(&str, &str, &[(&str, &str)]); 13] = [
        ("voxgate.decision.token_expired", "voxgate_decision", &[("reason", "token_expired")]),
        ("voxgate.decision.allowed", "voxgate_decision", &[("reason", "allowed")]),
        ("voxgate.rate_limited.global_requests", "voxgate_rate_limited", &[("bucket", "global_requests")]),
        ("voxgate.shadow_refused.subject_characters", "voxgate_shadow_refused", &[("bucket", "subject_characters")]),
        ("voxgate.plan_decision.pro.rate_limited", "voxgate_plan_decision", &[("plan", "pro"), ("decision", "rate_limited")]),
        ("voxgate.token_cache.hit", "voxgate_token_cache", &[("result", "hit")]),
        ("voxgate.jwks_fetch.corp.ok", "voxgate_jwks_fetch", &[("provider", "corp"), ("result", "ok")]),
        ("voxgate.cluster.over_limit", "voxgate_cluster", &[("result", "over_limit")]),
        ("voxgate.characters_admitted", "voxgate_characters_admitted", &[]),
        ("voxgate.audio_milliseconds_charged", "voxgate_audio_milliseconds_charged", &[]),
        ("voxgate.plan_audio_milliseconds.pro", "voxgate_plan_audio_milliseconds", &[("plan", "pro")]),
        ("voxgate.cas_retries", "voxgate_cas_retries", &[]),
        ("voxgate.cluster.failed", "voxgate_cluster", &[("result", "failed")]),
    ];
    for (defined, name, labels) in cases {
        let wasm_name = format!("wasmcustom.{defined}");
        assert_eq!(prometheus(&wasm_name, &tags), (name.to_string(), label(labels)), "{defined}");
    }
}
