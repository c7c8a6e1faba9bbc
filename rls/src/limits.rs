//! Which counter each descriptor of a request charges, and by how much: the descriptor layout
//! the filter sends (`voxgate_filter::ratelimit::cluster`) matched against the limits derived
//! from the filter's configuration, and the storage key of each counter.
//!
//! Key layout: `voxgate:{domain}:{limit}:{plan}:{holder}`, e.g.
//! `voxgate:voxgate:subject_requests:free:alice` or `voxgate:voxgate:global_requests:-:-`.
//! `domain`, `plan` and `holder` are percent-encoded (`%` → `%25`, `:` → `%3A`), so a `:` in a
//! value can never shift the parts and two different counters never share a key. `-` stands
//! for "no plan" (every limit but the subject ones) and "no holder" (the global limits); it
//! cannot collide with a plan or a subject named `-`, because whether a limit has a plan and a
//! holder is fixed by its name, the key's third part.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use voxgate_filter::ratelimit::cluster::{
    GlobalLimit, Holder, ServiceLimit, CLIENT_KEY, LIMIT_KEY, PLAN_KEY, SUBJECT_KEY,
};

use crate::store::Charge;

/// More descriptors than this in one request is not a request the filter sends (it sends at
/// most one per cluster-wide limit); refusing it bounds the work one request can cause.
pub const MAX_DESCRIPTORS: usize = 64;

/// The limits of one domain, as derived from the filter's configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    domain: String,
    by_limit: BTreeMap<(GlobalLimit, Option<String>), ServiceLimit>,
}

/// Why a request is not answered with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    UnknownDomain,
    TooManyDescriptors,
}

impl Invalid {
    pub fn message(self) -> String {
        match self {
            Invalid::UnknownDomain => "unknown domain".to_string(),
            Invalid::TooManyDescriptors => {
                format!("more than {MAX_DESCRIPTORS} descriptors in one request")
            }
        }
    }
}

/// What a request asks of the storage: one charge per distinct counter, and for each request
/// descriptor, in order, the limit it matched and the index of the charge it takes part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment<'a> {
    pub charges: Vec<Charge>,
    pub descriptors: Vec<Option<Matched<'a>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'a> {
    pub limit: &'a ServiceLimit,
    pub charge: usize,
}

impl Limits {
    pub fn new(domain: String, limits: Vec<ServiceLimit>) -> Self {
        let by_limit = limits
            .into_iter()
            .map(|limit| ((limit.limit, limit.plan.clone()), limit))
            .collect();
        Limits { domain, by_limit }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Limits configured: one per limit and plan.
    pub fn count(&self) -> usize {
        self.by_limit.len()
    }

    /// The charges of `request`. Descriptors that name the same counter are merged into one
    /// charge of their summed cost, so that the storage checks the counter against everything
    /// the request adds to it.
    pub fn assess(&self, request: &RateLimitRequest) -> Result<Assessment<'_>, Invalid> {
        if request.domain != self.domain {
            return Err(Invalid::UnknownDomain);
        }
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Invalid::TooManyDescriptors);
        }
        let mut charges: Vec<Charge> = Vec::new();
        let mut descriptors = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let Some((limit, holder)) = self.matching(descriptor) else {
                descriptors.push(None);
                continue;
            };
            let key = counter_key(&self.domain, limit.limit, limit.plan.as_deref(), holder);
            let cost = cost(request.hits_addend, descriptor);
            let charge = match charges.iter().position(|c| c.key == key) {
                Some(index) => {
                    let merged = charges[index].cost.saturating_add(cost);
                    charges[index].cost = bounded_cost(merged, limit.capacity);
                    index
                }
                None => {
                    charges.push(Charge {
                        key,
                        cost: bounded_cost(cost, limit.capacity),
                        capacity: limit.capacity,
                        window_seconds: limit.window_seconds,
                    });
                    charges.len() - 1
                }
            };
            descriptors.push(Some(Matched { limit, charge }));
        }
        Ok(Assessment {
            charges,
            descriptors,
        })
    }

    /// The configured limit `descriptor` names, and the value of its holder entry. Entries
    /// other than the ones the limit needs are ignored; a needed entry given twice is
    /// ambiguous, and the descriptor then matches nothing. So does a descriptor asking for
    /// negative hits: that is a refund, which these counters do not take.
    fn matching<'a>(
        &self,
        descriptor: &'a RateLimitDescriptor,
    ) -> Option<(&ServiceLimit, Option<&'a str>)> {
        if descriptor.is_negative_hits {
            return None;
        }
        let name = entry(descriptor, LIMIT_KEY)?;
        let limit = GlobalLimit::ALL.into_iter().find(|l| l.name() == name)?;
        let (plan, holder) = match limit.holder() {
            Holder::Subject => (
                Some(entry(descriptor, PLAN_KEY)?.to_string()),
                Some(entry(descriptor, SUBJECT_KEY)?),
            ),
            Holder::Client => (None, Some(entry(descriptor, CLIENT_KEY)?)),
            Holder::Everyone => (None, None),
        };
        let configured = self.by_limit.get(&(limit, plan))?;
        Some((configured, holder))
    }
}

/// The value of the only entry named `key`.
fn entry<'a>(descriptor: &'a RateLimitDescriptor, key: &str) -> Option<&'a str> {
    let mut values = descriptor.entries.iter().filter(|e| e.key == key);
    let value = values.next()?;
    values.next().is_none().then_some(value.value.as_str())
}

/// A descriptor's own `hits_addend` when it carries one (0 only looks at the counter), else
/// the request's, where 0 means 1, as Envoy reads it.
pub fn cost(request_hits_addend: u32, descriptor: &RateLimitDescriptor) -> u64 {
    match &descriptor.hits_addend {
        Some(own) => own.value,
        None if request_hits_addend == 0 => 1,
        None => u64::from(request_hits_addend),
    }
}

/// Any cost above the capacity is refused whatever the counter holds, so it is cut to
/// capacity + 1: the decision is the same, and every number the Redis script compares stays
/// far below 2^53, where Lua's numbers (doubles) are exact.
fn bounded_cost(cost: u64, capacity: u64) -> u64 {
    cost.min(capacity.saturating_add(1))
}

/// The storage key of one counter (layout in the module comment).
pub fn counter_key(
    domain: &str,
    limit: GlobalLimit,
    plan: Option<&str>,
    holder: Option<&str>,
) -> String {
    let mut key = String::from("voxgate:");
    encode_into(&mut key, domain);
    key.push(':');
    key.push_str(limit.name());
    key.push(':');
    match plan {
        Some(plan) => encode_into(&mut key, plan),
        None => key.push('-'),
    }
    key.push(':');
    match holder {
        Some(holder) => encode_into(&mut key, holder),
        None => key.push('-'),
    }
    key
}

fn encode_into(key: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;

    fn limit(limit: GlobalLimit, plan: Option<&str>, capacity: u64) -> ServiceLimit {
        ServiceLimit {
            limit,
            plan: plan.map(str::to_string),
            capacity,
            window_seconds: 60,
        }
    }

    fn limits() -> Limits {
        Limits::new(
            "voxgate".to_string(),
            vec![
                limit(GlobalLimit::SubjectRequests, Some("free"), 10),
                limit(GlobalLimit::SubjectCharacters, Some("free"), 2000),
                limit(GlobalLimit::SubjectRequests, Some("pro"), 100),
                limit(GlobalLimit::AnonymousRequests, None, 5),
                limit(GlobalLimit::GlobalRequests, None, 50),
            ],
        )
    }

    fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "voxgate".to_string(),
            descriptors,
            hits_addend,
        }
    }

    #[test]
    fn descriptors_of_the_filter_layout_match_their_counters() {
        let limits = limits();
        let request = request(
            vec![
                descriptor(
                    &[
                        ("limit", "subject_requests"),
                        ("plan", "pro"),
                        ("subject", "alice"),
                    ],
                    Some(1),
                ),
                descriptor(
                    &[("limit", "anonymous_requests"), ("client", "10.0.0.1")],
                    Some(1),
                ),
                descriptor(&[("limit", "global_requests")], Some(1)),
            ],
            1,
        );
        let assessment = limits.assess(&request).unwrap();
        let keys: Vec<&str> = assessment.charges.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "voxgate:voxgate:subject_requests:pro:alice",
                "voxgate:voxgate:anonymous_requests:-:10.0.0.1",
                "voxgate:voxgate:global_requests:-:-",
            ]
        );
        let matched: Vec<(GlobalLimit, Option<&str>, usize)> = assessment
            .descriptors
            .iter()
            .map(|m| m.unwrap())
            .map(|m| (m.limit.limit, m.limit.plan.as_deref(), m.charge))
            .collect();
        assert_eq!(
            matched,
            vec![
                (GlobalLimit::SubjectRequests, Some("pro"), 0),
                (GlobalLimit::AnonymousRequests, None, 1),
                (GlobalLimit::GlobalRequests, None, 2),
            ]
        );
        assert_eq!(assessment.charges[0].capacity, 100);
        assert_eq!(assessment.charges[0].window_seconds, 60);
    }

    #[test]
    fn entries_may_come_in_any_order_and_extra_entries_are_ignored() {
        let limits = limits();
        let assessment = limits
            .assess(&request(
                vec![descriptor(
                    &[
                        ("subject", "bob"),
                        ("route", "speech"),
                        ("plan", "free"),
                        ("limit", "subject_requests"),
                    ],
                    None,
                )],
                0,
            ))
            .unwrap();
        assert_eq!(
            assessment.charges[0].key,
            "voxgate:voxgate:subject_requests:free:bob"
        );
    }

    #[test]
    fn descriptors_matching_no_configured_limit_do_not_count() {
        let limits = limits();
        let assessment = limits
            .assess(&request(
                vec![
                    descriptor(
                        &[
                            ("limit", "subject_audio_seconds"),
                            ("plan", "free"),
                            ("subject", "a"),
                        ],
                        None,
                    ),
                    // `pro` has no characters limit.
                    descriptor(
                        &[
                            ("limit", "subject_characters"),
                            ("plan", "pro"),
                            ("subject", "a"),
                        ],
                        None,
                    ),
                    descriptor(
                        &[
                            ("limit", "subject_requests"),
                            ("plan", "gold"),
                            ("subject", "a"),
                        ],
                        None,
                    ),
                    descriptor(&[("limit", "subject_requests"), ("plan", "free")], None),
                    descriptor(&[("limit", "anonymous_requests")], None),
                    // Not configured at all.
                    descriptor(&[("limit", "global_characters")], None),
                    descriptor(
                        &[("limit", "global_requests"), ("limit", "global_requests")],
                        None,
                    ),
                    descriptor(&[("generic_key", "x")], None),
                    descriptor(&[], None),
                    RateLimitDescriptor {
                        is_negative_hits: true,
                        ..descriptor(&[("limit", "global_requests")], None)
                    },
                ],
                1,
            ))
            .unwrap();
        assert!(assessment.charges.is_empty());
        assert_eq!(assessment.descriptors, vec![None; 10]);
    }

    #[test]
    fn the_domain_must_be_the_configured_one() {
        let mut other = request(vec![descriptor(&[("limit", "global_requests")], None)], 1);
        other.domain = "other".to_string();
        assert_eq!(limits().assess(&other), Err(Invalid::UnknownDomain));
        assert_eq!(Invalid::UnknownDomain.message(), "unknown domain");
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let many = vec![descriptor(&[("limit", "global_requests")], None); MAX_DESCRIPTORS + 1];
        assert_eq!(
            limits().assess(&request(many, 1)),
            Err(Invalid::TooManyDescriptors)
        );
        let most = vec![descriptor(&[("limit", "global_requests")], None); MAX_DESCRIPTORS];
        assert!(limits().assess(&request(most, 1)).is_ok());
    }

    #[test]
    fn a_descriptor_cost_is_its_own_hits_addend_else_the_requests_where_zero_means_one() {
        let own = descriptor(&[], Some(7));
        let look = descriptor(&[], Some(0));
        let inherited = descriptor(&[], None);
        assert_eq!(cost(3, &own), 7);
        assert_eq!(cost(3, &look), 0);
        assert_eq!(cost(3, &inherited), 3);
        assert_eq!(cost(0, &inherited), 1);
    }

    #[test]
    fn descriptors_of_one_counter_are_charged_together_and_costs_are_bounded() {
        let global = |hits| descriptor(&[("limit", "global_requests")], Some(hits));
        let limits = limits();
        let assessment = limits
            .assess(&request(vec![global(20), global(25)], 1))
            .unwrap();
        assert_eq!(assessment.charges.len(), 1);
        assert_eq!(assessment.charges[0].cost, 45);
        assert_eq!(assessment.descriptors[0].unwrap().charge, 0);
        assert_eq!(assessment.descriptors[1].unwrap().charge, 0);

        let assessment = limits
            .assess(&request(vec![global(u64::MAX), global(u64::MAX)], 1))
            .unwrap();
        assert_eq!(assessment.charges[0].cost, 51, "capacity 50 + 1");
    }

    #[test]
    fn key_parts_are_encoded_so_separators_in_values_cannot_collide() {
        let key = |plan: &str, subject: &str| {
            counter_key("d", GlobalLimit::SubjectRequests, Some(plan), Some(subject))
        };
        assert_eq!(key("a:b", "c"), "voxgate:d:subject_requests:a%3Ab:c");
        assert_ne!(key("a:b", "c"), key("a", "b:c"));
        assert_ne!(key("a%3Ab", "c"), key("a:b", "c"));
        assert_eq!(key("100%", "é ü"), "voxgate:d:subject_requests:100%25:é ü");
        assert_eq!(
            counter_key(
                "vox:gate",
                GlobalLimit::AnonymousCharacters,
                None,
                Some("::1")
            ),
            "voxgate:vox%3Agate:anonymous_characters:-:%3A%3A1"
        );
        assert_eq!(
            counter_key("d", GlobalLimit::GlobalCharacters, None, None),
            "voxgate:d:global_characters:-:-"
        );
    }
}
