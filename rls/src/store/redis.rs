//! Counters in Redis, shared by every service process: one Lua script (`script.lua`) checks
//! and increments all the counters of a request in a single atomic `EVALSHA`, so no
//! concurrency, within a process or across processes, lets a counter pass its capacity.
//!
//! Our own counters rather than limitador's: limitador's crates do not build without its
//! disk storage, which compiles RocksDB from C++ source, too slow a build for this project.
//!
//! One Redis server (or a primary with replicas); not Redis Cluster, where the keys of one
//! request could live on different nodes. Run it with `maxmemory-policy noeviction`: an
//! evicted counter would hand its holder a fresh budget, a refused write only fails calls.
//!
//! Every call is bounded by the storage timeout. A call that timed out may still have been
//! applied by Redis: it then counted a request that was answered UNAVAILABLE, an error on the
//! safe side.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};

use super::{Charge, Level, Outcome, StoreError};

const SCRIPT: &str = include_str!("script.lua");

/// How long one connection attempt may take. Reconnecting is not on a request's path (a
/// request waits at most the storage timeout either way), so this can exceed that timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between reconnection attempts, which bounds how long the service stays
/// unavailable after Redis is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

pub struct RedisStore {
    connection: ConnectionManager,
    script: Script,
    timeout: Duration,
    address: String,
}

impl RedisStore {
    /// A store over the Redis at `url`. No connection is made yet: the first call makes it,
    /// and a Redis that is down at start only makes calls fail until it is up. Must be called
    /// within the Tokio runtime, which runs the reconnections.
    pub fn open(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| e.to_string())?;
        let info = client.get_connection_info();
        let address = format!("redis {} db {}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout))
            .set_max_delay(MAX_RECONNECT_DELAY);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(RedisStore {
            connection,
            script: Script::new(SCRIPT),
            timeout,
            address,
        })
    }

    /// Where the store is, without the credentials of the URL.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub async fn apply(&self, charges: &[Charge]) -> Result<Outcome, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for charge in charges {
            invocation
                .key(&charge.key)
                .arg(charge.cost)
                .arg(charge.capacity)
                .arg(charge.window_seconds);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<i64> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        outcome(charges, &answer)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(())
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_timeout() => Err(StoreError::Timeout),
            Ok(Err(error)) => Err(StoreError::Redis(error.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

/// Reads the script's answer (layout in `script.lua`).
fn outcome(charges: &[Charge], answer: &[i64]) -> Result<Outcome, StoreError> {
    let malformed =
        || StoreError::Redis("the counter script answered in an unexpected form".to_string());
    let (&admitted, levels) = answer.split_first().ok_or_else(malformed)?;
    if levels.len() != 2 * charges.len() {
        return Err(malformed());
    }
    let levels = levels
        .chunks_exact(2)
        .map(|pair| {
            let count = u64::try_from(pair[0]).map_err(|_| malformed())?;
            let reset = Duration::from_millis(u64::try_from(pair[1]).unwrap_or(0));
            Ok(Level { count, reset })
        })
        .collect::<Result<Vec<Level>, StoreError>>()?;
    Ok(Outcome {
        admitted: admitted == 1,
        levels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str) -> Charge {
        Charge {
            key: key.to_string(),
            cost: 1,
            capacity: 5,
            window_seconds: 60,
        }
    }

    #[test]
    fn the_scripts_answer_is_read_in_charge_order() {
        let outcome = outcome(&[charge("a"), charge("b")], &[1, 3, 59_500, 1, 60_000]).unwrap();
        assert!(outcome.admitted);
        assert_eq!(
            outcome.levels,
            vec![
                Level {
                    count: 3,
                    reset: Duration::from_millis(59_500)
                },
                Level {
                    count: 1,
                    reset: Duration::from_secs(60)
                }
            ]
        );
        assert!(
            !super::outcome(&[charge("a")], &[0, 5, 10])
                .unwrap()
                .admitted
        );
    }

    #[test]
    fn a_malformed_answer_is_an_error() {
        assert!(matches!(
            outcome(&[charge("a")], &[]),
            Err(StoreError::Redis(_))
        ));
        assert!(matches!(
            outcome(&[charge("a")], &[1, 2]),
            Err(StoreError::Redis(_))
        ));
        assert!(matches!(
            outcome(&[charge("a")], &[1, -1, 10]),
            Err(StoreError::Redis(_))
        ));
    }

    #[tokio::test]
    async fn urls_are_described_without_their_credentials() {
        let store = RedisStore::open(
            "redis://user:s3cret@127.0.0.1:6390/2",
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(store.address(), "redis 127.0.0.1:6390 db 2");
        assert!(RedisStore::open("rediss://127.0.0.1:6390/0", Duration::from_millis(50)).is_err());
        assert!(RedisStore::open("http://127.0.0.1/", Duration::from_millis(50)).is_err());
    }
}
