//! The public surface: typed build errors instead of panics or hangs, auto traits, `Debug`
//! without bounds on jobs.

use keyed_dispatch::{
    BuildError, CloseReport, DispatchError, Dispatcher, Stats, WaitError, WorkerPool,
};
use std::time::Duration;

fn build(builder: keyed_dispatch::Builder<u32, u32>) -> Result<Dispatcher<u32, u32>, BuildError> {
    builder.build(|_: &u32, _: u32| {})
}

#[test]
fn zero_capacities_accept_one_job_per_free_thread_and_key() {
    let d = build(Dispatcher::builder().workers(1).capacity(0).key_capacity(0)).unwrap();
    d.dispatch(1, 0).unwrap();
    d.dispatch(1, 1).unwrap();
    assert_eq!(d.close().stats.completed, 2);
}

#[test]
fn bad_configurations_are_typed_errors() {
    let b = Dispatcher::builder;
    assert!(matches!(
        build(b().workers(0)),
        Err(BuildError::ZeroWorkers)
    ));
    assert!(matches!(
        build(b().workers(usize::MAX)),
        Err(BuildError::TooManyWorkers { .. })
    ));
    assert!(matches!(
        build(b().name("ledger\0")),
        Err(BuildError::NameWithNul)
    ));
    assert!(matches!(
        build(b().jobs_per_turn(0)),
        Err(BuildError::ZeroJobsPerTurn)
    ));
    assert!(matches!(
        build(b().workers(2).max_parallel(0)),
        Err(BuildError::ZeroMaxParallel)
    ));
    assert!(matches!(
        build(b().capacity(10).key_capacity(11)),
        Err(BuildError::KeyCapacityAboveCapacity {
            key_capacity: 11,
            capacity: 10
        })
    ));
    assert!(matches!(
        build(b().workers(2).max_parallel(3)),
        Err(BuildError::MaxParallelAboveWorkers {
            max_parallel: 3,
            workers: 2
        })
    ));
    assert!(matches!(
        build(b().capacity(usize::MAX)),
        Err(BuildError::CapacityTooLarge { .. })
    ));
    let pool = WorkerPool::new(1).unwrap();
    assert!(matches!(
        build(b().workers(1).pool(&pool)),
        Err(BuildError::WorkersWithPool)
    ));
    assert!(matches!(
        build(b().pin_workers(true).pool(&pool)),
        Err(BuildError::PinWithPool)
    ));
    // Where a thread's affinity is only a hint, pinning is refused rather than pretended.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    assert!(matches!(
        build(b().pin_workers(true)),
        Err(BuildError::PinUnsupported)
    ));
    pool.close();
    assert!(matches!(
        build(b().pool(&pool)),
        Err(BuildError::PoolClosed)
    ));
    assert!(matches!(WorkerPool::new(0), Err(BuildError::ZeroWorkers)));
    assert!(matches!(
        WorkerPool::builder().name("\0").build(),
        Err(BuildError::NameWithNul)
    ));
    let err = build(b().capacity(10).key_capacity(11)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "key_capacity (11) is larger than capacity (10)"
    );
}

#[test]
fn defaults_build_and_close() {
    let d = build(Dispatcher::builder().idle_timeout(Duration::ZERO)).unwrap();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(d.stats().workers, workers);
    assert_eq!(d.name(), "keyed-dispatch");
    d.dispatch(1, 1).unwrap();
    let report: CloseReport = d.close();
    assert_eq!(report.stats.completed, 1);
}

#[test]
fn handles_and_errors_are_send_sync_and_debug_without_bounds() {
    fn send_sync<T: Send + Sync>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    struct NotDebug;
    send_sync::<Dispatcher<String, Vec<u8>>>();
    send_sync::<Dispatcher<u64, Box<dyn FnOnce() + Send>>>();
    send_sync::<WorkerPool>();
    send_sync::<Stats>();
    error::<DispatchError<u64, NotDebug>>();
    error::<BuildError>();
    error::<WaitError>();
    let err: DispatchError<u8, NotDebug> = DispatchError::Closed {
        key: 1,
        job: NotDebug,
    };
    assert_eq!(format!("{err:?}"), "Closed(..)");
    let d = Dispatcher::builder()
        .workers(1)
        .build(|_: &u8, _: NotDebug| {})
        .unwrap();
    assert!(format!("{d:?}").starts_with("Dispatcher"));
}
