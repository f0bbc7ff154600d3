//! A worker process running the `orders` example's handler, configured by `WEIR_*` variables;
//! the kill test runs three of them and SIGKILLs them.

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
            .build(weir_examples::orders::OrderTotals)?
            .run_until_signal()
            .await
    }
    .await;
    if let Err(e) = result {
        eprintln!("orders-worker: {e}");
        std::process::exit(1);
    }
}
