//! A worker process running [`weir_tests::tally::TallyHandler`], configured by `WEIR_*`
//! variables (`TALLY_WORKER_DELAY_US` slows every record); the kill test SIGKILLs and
//! restarts it.

#[tokio::main]
async fn main() {
    let handler = weir_tests::tally::TallyHandler {
        delay: std::env::var("TALLY_WORKER_DELAY_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_micros),
        to: None,
    };
    weir_tests::run_worker_process("tally-worker", handler).await;
}
