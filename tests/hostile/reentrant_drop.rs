//! A key whose `Drop` calls back into its dispatcher (here `stats()`, through a handle the key
//! holds): `close` drops the keys it evicts, and must not hold a lock of its own meanwhile.

use crate::{in_child, test_path, watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

type Handle = Arc<OnceLock<Weak<Dispatcher<CallbackKey, u32>>>>;

/// A key that reads its dispatcher's counters when dropped.
#[derive(Clone)]
struct CallbackKey {
    id: u64,
    me: Handle,
}

impl Drop for CallbackKey {
    fn drop(&mut self) {
        if let Some(d) = self.me.get().and_then(Weak::upgrade) {
            std::hint::black_box(d.stats());
        }
    }
}

impl Hash for CallbackKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialEq for CallbackKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for CallbackKey {}

impl fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallbackKey({})", self.id)
    }
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn close_returns_when_a_key_drop_calls_back_into_the_dispatcher() {
    let test = test_path(
        module_path!(),
        "close_returns_when_a_key_drop_calls_back_into_the_dispatcher",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        let me: Handle = Arc::default();
        let d = Arc::new(
            Dispatcher::builder()
                .workers(2)
                .name("hostile-reenter")
                // No key leaves before close: close is what evicts, and drops, them.
                .idle_timeout(Duration::from_secs(3600))
                .build(|_: &CallbackKey, _: u32| {})
                .unwrap(),
        );
        me.set(Arc::downgrade(&d)).unwrap();
        let key = |id| CallbackKey {
            id,
            me: Arc::clone(&me),
        };
        let group = d.group();
        for n in 0..6u32 {
            group.dispatch(key(u64::from(n % 3)), n).unwrap();
        }
        assert_eq!(group.wait().unwrap().completed, 6);
        assert_eq!(d.stats().keys, 3);
        let report = d.close();
        assert!(report.drained);
        assert_eq!(
            (report.stats.completed, report.stats.keys),
            (6, 0),
            "{:?}",
            report.stats
        );
    });
}
