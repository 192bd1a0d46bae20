//! How every run uses tokio: one current-thread runtime, run to the end of its work, then
//! dropped without waiting for a name lookup stuck in a blocking thread (the run is over;
//! `before_stop` must not hang on getaddrinfo).

use std::future::Future;

use anyhow::Result;

pub fn block_on<T>(work: impl Future<Output = T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let output = runtime.block_on(work);
    runtime.shutdown_background();
    Ok(output)
}
