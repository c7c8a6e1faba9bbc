//! Rate-limit response headers, in Envoy's `DRAFT_VERSION_03` form
//! (`X-RateLimit-Limit/Remaining/Reset`) or in the form of the IETF draft
//! draft-ietf-httpapi-ratelimit-headers (`RateLimit` and `RateLimit-Policy`).

use serde::Deserialize;

use super::charge::{Limit, Status};

/// Which rate-limit headers answers carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit: 10, 10;w=20;name="subject_requests"`, `X-RateLimit-Remaining: 9`,
    /// `X-RateLimit-Reset: 2`, as Envoy's rate-limit filters write them.
    #[default]
    #[serde(rename = "draft03")]
    Draft03,
    /// `RateLimit-Policy: "subject_requests";q=10;w=20` and `RateLimit: "subject_requests";r=9;t=2`.
    #[serde(rename = "ietf")]
    Ietf,
    /// No rate-limit headers (429 answers still carry `Retry-After`).
    #[serde(rename = "none")]
    Off,
}

/// One limit as the headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported {
    pub name: &'static str,
    pub status: Status,
}

/// Headers describing `reported`; `focus` indexes the limit the single-valued draft-03
/// fields describe (the one that refused, or the most constraining one).
pub(crate) fn render(style: HeaderStyle, reported: &[Reported], focus: usize) -> Vec<(String, String)> {
    let Some(main) = reported.get(focus) else {
        return Vec::new();
    };
    match style {
        HeaderStyle::Off => Vec::new(),
        HeaderStyle::Draft03 => {
            let mut limit = main.status.capacity.to_string();
            for r in reported {
                if let Some(window) = r.status.window_s {
                    limit.push_str(&format!(", {};w={};name=\"{}\"", r.status.capacity, window, r.name));
                }
            }
            let reset = main.status.reset_s.unwrap_or(1);
            vec![
                ("X-RateLimit-Limit".to_string(), limit),
                ("X-RateLimit-Remaining".to_string(), main.status.remaining.to_string()),
                ("X-RateLimit-Reset".to_string(), reset.to_string()),
            ]
        }
        HeaderStyle::Ietf => {
            let policy: Vec<String> = reported
                .iter()
                .map(|r| {
                    let mut item = format!("\"{}\";q={}", r.name, r.status.capacity);
                    if let Some(window) = r.status.window_s {
                        item.push_str(&format!(";w={window}"));
                    }
                    match r.status.limit {
                        Limit::Bucket(0) => {}
                        Limit::Bucket(_) => item.push_str(";qu=\"characters\""),
                        Limit::InFlight => item.push_str(";qu=\"concurrent-requests\""),
                    }
                    item
                })
                .collect();
            let current: Vec<String> = reported
                .iter()
                .map(|r| {
                    let mut item = format!("\"{}\";r={}", r.name, r.status.remaining);
                    if let (Some(reset), Some(_)) = (r.status.reset_s, r.status.window_s) {
                        item.push_str(&format!(";t={reset}"));
                    }
                    item
                })
                .collect();
            vec![
                ("RateLimit-Policy".to_string(), policy.join(", ")),
                ("RateLimit".to_string(), current.join(", ")),
            ]
        }
    }
}

/// The bucket with the smallest remaining share of its capacity (the first on a tie); the
/// in-flight cap only when nothing else is reported.
pub(crate) fn most_constraining(reported: &[Reported]) -> usize {
    let mut best: Option<usize> = None;
    for (index, r) in reported.iter().enumerate() {
        if r.status.limit == Limit::InFlight {
            continue;
        }
        let tighter = best.is_none_or(|b| {
            let current = &reported[b].status;
            u128::from(r.status.remaining) * u128::from(current.capacity)
                < u128::from(current.remaining) * u128::from(r.status.capacity)
        });
        if tighter {
            best = Some(index);
        }
    }
    best.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Reported> {
        vec![
            Reported {
                name: "subject_requests",
                status: Status { limit: Limit::Bucket(0), capacity: 10, remaining: 9, reset_s: Some(2), window_s: Some(20) },
            },
            Reported {
                name: "subject_characters",
                status: Status { limit: Limit::Bucket(1), capacity: 2000, remaining: 100, reset_s: Some(95), window_s: Some(100) },
            },
            Reported {
                name: "subject_in_flight",
                status: Status { limit: Limit::InFlight, capacity: 2, remaining: 0, reset_s: None, window_s: None },
            },
            Reported {
                name: "global_requests",
                status: Status { limit: Limit::Bucket(0), capacity: 3, remaining: 3, reset_s: Some(0), window_s: None },
            },
        ]
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        &headers.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn draft03_describes_the_focus_and_lists_refilling_policies() {
        let reported = sample();
        let focus = most_constraining(&reported);
        assert_eq!(focus, 1, "100/2000 left is tighter than 9/10");
        let h = render(HeaderStyle::Draft03, &reported, focus);
        assert_eq!(
            header(&h, "X-RateLimit-Limit"),
            "2000, 10;w=20;name=\"subject_requests\", 2000;w=100;name=\"subject_characters\""
        );
        assert_eq!(header(&h, "X-RateLimit-Remaining"), "100");
        assert_eq!(header(&h, "X-RateLimit-Reset"), "95");
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn draft03_for_a_refusing_in_flight_cap() {
        let h = render(HeaderStyle::Draft03, &sample(), 2);
        assert!(header(&h, "X-RateLimit-Limit").starts_with("2, 10;w=20"));
        assert_eq!(header(&h, "X-RateLimit-Remaining"), "0");
        assert_eq!(header(&h, "X-RateLimit-Reset"), "1");
    }

    #[test]
    fn ietf_lists_every_policy_and_its_current_state() {
        let h = render(HeaderStyle::Ietf, &sample(), 0);
        assert_eq!(
            header(&h, "RateLimit-Policy"),
            "\"subject_requests\";q=10;w=20, \"subject_characters\";q=2000;w=100;qu=\"characters\", \
             \"subject_in_flight\";q=2;qu=\"concurrent-requests\", \"global_requests\";q=3"
        );
        assert_eq!(
            header(&h, "RateLimit"),
            "\"subject_requests\";r=9;t=2, \"subject_characters\";r=100;t=95, \
             \"subject_in_flight\";r=0, \"global_requests\";r=3"
        );
    }

    #[test]
    fn off_and_empty_give_nothing() {
        assert!(render(HeaderStyle::Off, &sample(), 0).is_empty());
        assert!(render(HeaderStyle::Draft03, &[], 0).is_empty());
    }

    #[test]
    fn style_names_in_json() {
        let parse = |s: &str| serde_json::from_str::<HeaderStyle>(s).unwrap();
        assert_eq!(parse("\"draft03\""), HeaderStyle::Draft03);
        assert_eq!(parse("\"ietf\""), HeaderStyle::Ietf);
        assert_eq!(parse("\"none\""), HeaderStyle::Off);
    }
}
