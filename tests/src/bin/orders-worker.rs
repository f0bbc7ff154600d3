//! A worker process running the `orders` example's handler, configured by `WEIR_*` variables;
//! the kill test runs three of them and SIGKILLs them.

#[tokio::main]
async fn main() {
    weir_tests::run_worker_process("orders-worker", weir_examples::orders::OrderTotals).await;
}
