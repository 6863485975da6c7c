//! Runs the fault conformance suite against the AWS, Google Cloud and Azure fakes (real SDK
//! clients) with the breaker's default windows, and prints what it measured: how long after a
//! disable, delete or deny writes and reads stop (against the cache's max ages), KMS calls per
//! second on a revoked key and during outages, and the longest wait of any caller.
//!
//! ```sh
//! cargo run --all-features --example fault_report
//! ```

use std::time::Duration;

use cmek::BreakerConfig;
use cmek::testkit::fault_suite::{self, FaultTarget, SuiteConfig};
use cmek::testkit::targets::{AwsTarget, AzureTarget, GcpTarget};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> cmek::Result<()> {
    let mut config = SuiteConfig::default();
    config.max_age = Duration::from_secs(2);
    config.deadline = Duration::from_secs(10);
    config.breaker = BreakerConfig::default();
    config.watch = Duration::from_secs(6);
    config.slack = Duration::from_millis(500);
    println!(
        "max ages {} ms, deadline {} ms, breaker: revoked {} ms, probe {} ms",
        config.max_age.as_millis(),
        config.deadline.as_millis(),
        config.breaker.revoked_retry_after.as_millis(),
        config.breaker.probe_interval.as_millis()
    );
    let targets: Vec<Box<dyn FaultTarget>> = vec![
        Box::new(AwsTarget::start().await?),
        Box::new(GcpTarget::start().await?),
        Box::new(AzureTarget::start().await?),
    ];
    for target in &targets {
        print!("{}", fault_suite::run_all(target.as_ref(), &config).await);
    }
    Ok(())
}
