//! Running independent jobs on a few threads, and marking the threads whose panics are caught
//! (engine calls).

use crate::error::{Error, Result};

thread_local! {
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as running code whose panics are caught and turned into an
/// error (the engine calls behind `catch_unwind`), until dropped. A panic hook can ask
/// [`panics_are_caught`] and stay silent for those: the error that the panic becomes
/// reports it (`elx` does, so a caught engine panic prints no "thread 'main' panicked").
pub struct CatchingPanics(());

impl CatchingPanics {
    /// Enters a region whose panics are caught (nests).
    pub fn enter() -> Self {
        CATCHING.with(|c| c.set(c.get() + 1));
        CatchingPanics(())
    }
}

impl Drop for CatchingPanics {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Whether the current thread is inside a [`CatchingPanics`] region.
pub fn panics_are_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// A job for [`run_parallel`].
pub type Job<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Runs `jobs` on up to `threads` scoped threads, each taking the next job from a shared
/// queue, and returns their results in job order; the first error in job order is returned.
/// The engines' runs are single-threaded, so independent evaluations fill the cores this
/// way.
pub fn run_parallel<T: Send>(jobs: Vec<Job<'_, T>>, threads: usize) -> Result<Vec<T>> {
    use std::sync::Mutex;
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let done: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(n));
    let work = || {
        loop {
            // Jobs are taken in order; a poisoned lock only means another worker panicked.
            let next = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            };
            let Some((i, job)) = next else { break };
            let r = job();
            done.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| s.spawn(work))
            .collect();
        for h in handles {
            // A panicking job leaves its result missing, reported below.
            let _ = h.join();
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    if done.len() != n {
        return Err(Error::Usage(format!(
            "{} of {n} parallel jobs did not finish (a worker thread panicked)",
            n - done.len()
        )));
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Worker threads for independent evaluations: the machine's cores.
pub fn eval_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_jobs_return_in_order_and_report_errors_and_panics() {
        let jobs: Vec<Job<'_, usize>> = (0usize..7)
            .map(|i| Box::new(move || Ok(i * i)) as Job<'_, usize>)
            .collect();
        assert_eq!(run_parallel(jobs, 3).unwrap(), [0, 1, 4, 9, 16, 25, 36]);
        let jobs: Vec<Job<'_, usize>> = vec![
            Box::new(|| Ok(1usize)),
            Box::new(|| Err(Error::Usage("second".into()))),
            Box::new(|| Err(Error::Usage("third".into()))),
        ];
        let e = run_parallel(jobs, 2).unwrap_err().to_string();
        assert!(e.contains("second"), "{e}");
        let jobs: Vec<Job<'_, usize>> = vec![Box::new(|| Ok(1usize)), Box::new(|| panic!("job"))];
        assert!(
            run_parallel(jobs, 2)
                .unwrap_err()
                .to_string()
                .contains("did not finish")
        );
        assert!(
            run_parallel(Vec::<Job<'_, usize>>::new(), 2)
                .unwrap()
                .is_empty()
        );
    }
}
