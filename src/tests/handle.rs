//! The dispatcher handle that the loom models (`loom`) and the shuttle tests (`shuttle`) share
//! with the threads they spawn.

use crate::Dispatcher;
use std::{ops::Deref, sync::Arc};

/// A model's dispatcher, shared with the threads it spawns.
///
/// Dropped normally, the last reference closes the dispatcher as usual. Dropped while a failed
/// execution unwinds, it is leaked instead: closing would call into the checker after the
/// execution has ended, and that second panic would abort the whole test binary.
pub(crate) struct Handle(Option<Arc<Dispatcher<u8, u32>>>);

impl Handle {
    pub(crate) fn new(dispatcher: Dispatcher<u8, u32>) -> Handle {
        Handle(Some(Arc::new(dispatcher)))
    }

    pub(crate) fn share(&self) -> Handle {
        Handle(self.0.clone())
    }
}

impl Deref for Handle {
    type Target = Dispatcher<u8, u32>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}
