//! Threads where there are threads: std scoped threads natively, one after another on wasm32
//! (which has no threads without extra browser set-up).

/// How many threads to spread work over.
#[cfg(not(target_arch = "wasm32"))]
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(target_arch = "wasm32")]
pub fn worker_count() -> usize {
    1
}

/// `f` of each item, one thread per item, results in item order.
#[cfg(not(target_arch = "wasm32"))]
pub fn parallel_map<T: Send, R: Send, F: Fn(T) -> R + Sync>(items: Vec<T>, f: F) -> Vec<R> {
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.into_iter().map(|item| scope.spawn(move || f(item))).collect();
        handles.into_iter().map(|h| h.join().expect("worker thread panicked")).collect()
    })
}

#[cfg(target_arch = "wasm32")]
pub fn parallel_map<T: Send, R: Send, F: Fn(T) -> R + Sync>(items: Vec<T>, f: F) -> Vec<R> {
    items.into_iter().map(f).collect()
}
