//! A worker process running [`weir_tests::CountHandler`], configured by `WEIR_*` variables
//! (`COUNT_WORKER_STALL_ON=<value>` hangs at that record, `COUNT_WORKER_DELAY_US` slows
//! every record);
//! the crash tests SIGKILL and restart it.

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let result = async {
        weir::Worker::from_env()?
            .build(weir_tests::CountHandler {
                stall_on: std::env::var("COUNT_WORKER_STALL_ON").ok(),
                delay: std::env::var("COUNT_WORKER_DELAY_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map(std::time::Duration::from_micros),
                ..Default::default()
            })?
            .run_until_signal()
            .await
    }
    .await;
    if let Err(e) = result {
        eprintln!("count-worker: {e}");
        std::process::exit(1);
    }
}
