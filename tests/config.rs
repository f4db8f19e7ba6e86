//! The public surface: typed build errors instead of panics or hangs, auto traits, `Debug`
//! without bounds on jobs.

mod common;

use common::{Watchdog, HANG};
use keyed_dispatch::{
    BoxedJob, BuildError, CloseReport, DispatchError, Dispatcher, Stats, WaitError, WorkerPool,
};
use std::{
    error::Error,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

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
    // The threads' other settings are the pool's too, whichever order they are set in.
    assert!(matches!(
        build(b().pool(&pool).thread_name(|i| format!("w{i}"))),
        Err(BuildError::ThreadSettingsWithPool {
            setting: "thread_name"
        })
    ));
    assert!(matches!(
        build(b().stack_size(1 << 20).pool(&pool)),
        Err(BuildError::ThreadSettingsWithPool {
            setting: "stack_size"
        })
    ));
    assert!(matches!(
        build(b().on_thread_start(|| {}).pool(&pool)),
        Err(BuildError::ThreadSettingsWithPool {
            setting: "on_thread_start"
        })
    ));
    assert!(matches!(
        build(b().pool(&pool).on_thread_stop(|| {})),
        Err(BuildError::ThreadSettingsWithPool {
            setting: "on_thread_stop"
        })
    ));
    assert_eq!(
        build(b().pool(&pool).stack_size(1 << 20))
            .unwrap_err()
            .to_string(),
        "stack_size and pool(&pool) cannot both be set: the threads are the pool's"
    );
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
fn a_thread_name_with_nul_is_a_typed_error_and_starts_nothing() {
    let started = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&started);
    let built = Dispatcher::builder()
        .workers(3)
        .thread_name(|i| {
            if i == 2 {
                "bad\0name".into()
            } else {
                format!("ok-{i}")
            }
        })
        .on_thread_start(move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build(|_: &u32, _: u32| {});
    assert!(matches!(built, Err(BuildError::NameWithNul)));
    let count = Arc::clone(&started);
    let pool = WorkerPool::builder()
        .workers(2)
        .thread_name(|i| {
            if i == 0 {
                "ok".into()
            } else {
                format!("{i}\0")
            }
        })
        .on_thread_start(move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    assert!(matches!(pool, Err(BuildError::NameWithNul)));
    // The names are checked before the first thread starts. A thread started and then stopped
    // by the failed build would have run its start hook before `build` returned, since the
    // failure path joins the threads it started; none did.
    assert_eq!(started.load(Ordering::SeqCst), 0);
    assert_eq!(
        BuildError::NameWithNul.to_string(),
        "a thread name cannot hold a NUL byte"
    );
    // The default names, from a prefix holding a NUL, are checked the same way.
    assert!(matches!(
        build(Dispatcher::builder().workers(1).name("a\0b")),
        Err(BuildError::NameWithNul)
    ));
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
fn handles_and_errors_are_send_sync_clone_and_debug_without_bounds() {
    fn send_sync<T: Send + Sync>() {}
    fn handle<T: Send + Sync + Clone + std::fmt::Debug>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    struct NotDebug;
    handle::<Dispatcher<String, Vec<u8>>>();
    handle::<Dispatcher<u64, BoxedJob>>();
    handle::<Dispatcher<u64, NotDebug>>();
    handle::<keyed_dispatch::Group<u64, NotDebug>>();
    send_sync::<WorkerPool>();
    send_sync::<Stats>();
    error::<DispatchError<u64, NotDebug>>();
    error::<DispatchError<u64, BoxedJob>>();
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

/// A spawner's refusal, which holds the closure, converts with `?` into the `Send + Sync` boxed
/// error that `anyhow::Error` and most application error types require.
#[test]
fn spawner_errors_work_with_question_mark() {
    fn spawn_one(d: &Dispatcher<u64, BoxedJob>) -> Result<(), Box<dyn Error + Send + Sync>> {
        d.spawn(1, || {})?;
        Ok(())
    }
    fn send_sync_error<T: Error + Send + Sync + 'static>() {}
    send_sync_error::<DispatchError<u64, BoxedJob>>();

    let _watchdog = Watchdog::new("spawner errors", HANG);
    let d = Dispatcher::builder().workers(1).build_spawner().unwrap();
    spawn_one(&d).unwrap();
    let (ran, count) = std::sync::mpsc::channel();
    let also_ran = ran.clone();
    d.dispatch(2, BoxedJob::new(move || ran.send(2).unwrap()))
        .unwrap();
    let boxed: Box<dyn FnOnce() + Send> = Box::new(move || also_ran.send(3).unwrap());
    d.dispatch(3, BoxedJob::new(boxed)).unwrap();
    assert_eq!(d.close().stats.completed, 3);
    let mut ran: Vec<u32> = count.try_iter().collect();
    ran.sort_unstable();
    assert_eq!(ran, [2, 3], "the jobs boxed by hand ran");
    let err = spawn_one(&d).unwrap_err();
    assert_eq!(err.to_string(), "dispatching on a closed dispatcher");
    let refused = err
        .downcast::<DispatchError<u64, BoxedJob>>()
        .expect("the error is the dispatcher's");
    assert_eq!(
        format!("{refused:?} {:?}", refused.job()),
        "Closed(..) BoxedJob(..)"
    );
    assert_eq!(*refused.key(), 1);
    refused.into_job().run(); // the refused job is handed back whole

    // A job dropped without running drops what its closure holds.
    let held = std::sync::Arc::new(());
    let kept = std::sync::Arc::clone(&held);
    drop(BoxedJob::new(move || drop(kept)));
    assert_eq!(std::sync::Arc::strong_count(&held), 1);
}
