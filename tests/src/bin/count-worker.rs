//! A worker process running [`weir_tests::CountHandler`], configured by `WEIR_*` variables
//! (`COUNT_WORKER_STALL_ON=<value>` hangs at that record, `COUNT_WORKER_DELAY_US` slows
//! every record);
//! the crash tests SIGKILL and restart it.

#[tokio::main]
async fn main() {
    let handler = weir_tests::CountHandler {
        stall_on: std::env::var("COUNT_WORKER_STALL_ON").ok(),
        delay: std::env::var("COUNT_WORKER_DELAY_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_micros),
        ..Default::default()
    };
    weir_tests::run_worker_process("count-worker", handler).await;
}
