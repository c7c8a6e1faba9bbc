//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: a request's descriptors
//! assessed against the limits, charged to the storage in one call, and the answer the
//! filter reads (`voxgate_filter::ratelimit::cluster::ClusterTier::answer`): one status per
//! descriptor, in order, with the limit, what remains and when the window resets.
//!
//! An invalid request is answered INVALID_ARGUMENT, a storage failure UNAVAILABLE: both are
//! "no decision", for the filter's `failure_mode` to settle.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf;
use tonic::{Request, Response, Status};
use voxgate_filter::ratelimit::cluster::proto;
use voxgate_filter::ratelimit::cluster::ServiceLimit;

use crate::limits::{Assessment, Limits};
use crate::metrics::{self, RequestResult};
use crate::store::{Outcome, Store};

/// A request larger than this is not one Envoy sends (descriptor values are plan names,
/// subjects and addresses); refusing it unread bounds the memory a request can take.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The units the filter reads a window from, in its own table (`proto::Unit::seconds`), so
/// that the two sides can never map a window differently.
const UNITS: [proto::Unit; 7] = [
    proto::Unit::Second,
    proto::Unit::Minute,
    proto::Unit::Hour,
    proto::Unit::Day,
    proto::Unit::Week,
    proto::Unit::Month,
    proto::Unit::Year,
];

/// The rate-limit service: the limits, and the storage of their counters.
pub struct RateLimiter {
    limits: Limits,
    store: Store,
}

impl RateLimiter {
    pub fn new(limits: Limits, store: Store) -> Self {
        RateLimiter { limits, store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The answer to one `ShouldRateLimit` call.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let assessment = self.limits.assess(request).map_err(|invalid| {
            metrics::request(RequestResult::Error);
            Status::invalid_argument(invalid.message())
        })?;
        let outcome = if assessment.charges.is_empty() {
            Outcome {
                admitted: true,
                levels: Vec::new(),
            }
        } else {
            self.store
                .apply(&assessment.charges)
                .await
                .map_err(|error| {
                    metrics::request(RequestResult::Error);
                    Status::unavailable(format!("rate-limit storage unavailable ({error})"))
                })?
        };
        let response = respond(&assessment, &outcome);
        metrics::request(if outcome.admitted {
            RequestResult::Ok
        } else {
            RequestResult::OverLimit
        });
        for (descriptor, status) in assessment.descriptors.iter().zip(&response.statuses) {
            let limit = descriptor.map_or(metrics::UNMATCHED, |m| m.limit.limit.name());
            metrics::descriptor(limit, status.code == Code::OverLimit as i32);
        }
        Ok(response)
    }
}

/// The gRPC service of `limiter`, refusing requests over `MAX_REQUEST_BYTES`.
pub fn grpc(limiter: Arc<RateLimiter>) -> RateLimitServiceServer<RateLimiter> {
    RateLimitServiceServer::from_arc(limiter).max_decoding_message_size(MAX_REQUEST_BYTES)
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

/// The response for `assessment` once the storage decided `outcome` (one level per charge).
pub fn respond(assessment: &Assessment<'_>, outcome: &Outcome) -> RateLimitResponse {
    let statuses = assessment
        .descriptors
        .iter()
        .map(|matched| {
            let Some(matched) = matched else {
                return DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                };
            };
            let charge = &assessment.charges[matched.charge];
            let level = outcome.levels[matched.charge];
            let over = !outcome.admitted && charge.exceeds(level.count);
            DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(current_limit(matched.limit)),
                limit_remaining: saturate(charge.capacity.saturating_sub(level.count)),
                duration_until_reset: Some(duration(level.reset)),
                quota: None,
            }
        })
        .collect();
    RateLimitResponse {
        overall_code: if outcome.admitted {
            Code::Ok
        } else {
            Code::OverLimit
        } as i32,
        statuses,
        ..Default::default()
    }
}

fn current_limit(limit: &ServiceLimit) -> RateLimit {
    RateLimit {
        name: match &limit.plan {
            Some(plan) => format!("{}/{plan}", limit.limit.name()),
            None => limit.limit.name().to_string(),
        },
        requests_per_unit: saturate(limit.capacity),
        unit: unit(limit.window_seconds) as i32,
    }
}

/// The unit exactly `window_seconds` long; UNKNOWN when none is (the filter then reports
/// no window).
pub fn unit(window_seconds: u64) -> Unit {
    UNITS
        .into_iter()
        .find(|unit| unit.seconds() == Some(window_seconds))
        .and_then(|unit| Unit::try_from(unit as i32).ok())
        .unwrap_or(Unit::Unknown)
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn duration(duration: Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use voxgate_filter::ratelimit::cluster::GlobalLimit;

    use super::*;
    use crate::limits::Matched;
    use crate::store::{Charge, Level};

    #[test]
    fn windows_map_to_the_unit_of_exactly_their_length() {
        let cases = [
            (1, Unit::Second),
            (60, Unit::Minute),
            (3_600, Unit::Hour),
            (86_400, Unit::Day),
            (604_800, Unit::Week),
            (2_592_000, Unit::Month),
            (31_536_000, Unit::Year),
            (20, Unit::Unknown),
            (61, Unit::Unknown),
            (0, Unit::Unknown),
        ];
        for (seconds, expected) in cases {
            assert_eq!(unit(seconds), expected, "{seconds} s");
        }
    }

    fn subject_limit(capacity: u64) -> ServiceLimit {
        ServiceLimit {
            limit: GlobalLimit::SubjectCharacters,
            plan: Some("free".to_string()),
            capacity,
            window_seconds: 100,
        }
    }

    fn global_limit() -> ServiceLimit {
        ServiceLimit {
            limit: GlobalLimit::GlobalRequests,
            plan: None,
            capacity: 50,
            window_seconds: 60,
        }
    }

    fn charge(limit: &ServiceLimit, cost: u64) -> Charge {
        Charge {
            key: limit.limit.name().to_string(),
            cost,
            capacity: limit.capacity,
            window_seconds: limit.window_seconds,
        }
    }

    #[test]
    fn a_refusal_names_the_counters_that_would_pass_their_capacity() {
        let subject = subject_limit(2000);
        let global = global_limit();
        let assessment = Assessment {
            charges: vec![charge(&subject, 300), charge(&global, 1)],
            descriptors: vec![
                Some(Matched {
                    limit: &subject,
                    charge: 0,
                }),
                None,
                Some(Matched {
                    limit: &global,
                    charge: 1,
                }),
            ],
        };
        let outcome = Outcome {
            admitted: false,
            levels: vec![
                Level {
                    count: 1800,
                    reset: Duration::from_millis(41_500),
                },
                Level {
                    count: 7,
                    reset: Duration::from_secs(60),
                },
            ],
        };
        let response = respond(&assessment, &outcome);
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        let [characters, unmatched, requests] = &response.statuses[..] else {
            panic!("three statuses")
        };
        assert_eq!(characters.code, Code::OverLimit as i32);
        assert_eq!(
            characters.current_limit,
            Some(RateLimit {
                name: "subject_characters/free".to_string(),
                requests_per_unit: 2000,
                unit: Unit::Unknown as i32
            })
        );
        assert_eq!(characters.limit_remaining, 200);
        assert_eq!(
            characters.duration_until_reset,
            Some(protobuf::Duration {
                seconds: 41,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            *unmatched,
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            }
        );
        assert_eq!(requests.code, Code::Ok as i32);
        assert_eq!(requests.limit_remaining, 43);
        assert_eq!(
            requests.current_limit.as_ref().unwrap().name,
            "global_requests"
        );
        assert_eq!(
            requests.current_limit.as_ref().unwrap().unit,
            Unit::Minute as i32
        );
    }

    #[test]
    fn an_admitted_request_reports_what_remains_after_it() {
        let subject = subject_limit(u64::from(u32::MAX) + 10);
        let assessment = Assessment {
            charges: vec![charge(&subject, 5)],
            descriptors: vec![Some(Matched {
                limit: &subject,
                charge: 0,
            })],
        };
        let outcome = Outcome {
            admitted: true,
            levels: vec![Level {
                count: 5,
                reset: Duration::from_secs(100),
            }],
        };
        let response = respond(&assessment, &outcome);
        assert_eq!(response.overall_code, Code::Ok as i32);
        let status = &response.statuses[0];
        assert_eq!(status.code, Code::Ok as i32);
        assert_eq!(status.limit_remaining, u32::MAX);
        assert_eq!(
            status.current_limit.as_ref().unwrap().requests_per_unit,
            u32::MAX
        );
    }
}
