//! Containing the panics of user code that runs on the pool's threads, outside a job: a key's
//! `Drop` and `Debug`, an error's `Display`, a panic payload's `Drop`.
//!
//! A panic that escaped there would unwind through the pool's bookkeeping, which aborts the
//! process (see `pool::AbortOnPanic`). Each of these catches the panic where the user code
//! runs, logs it, and carries on as if that code had done nothing.

use std::{
    any::Any,
    fmt::{self, Debug, Display},
    panic::{catch_unwind, AssertUnwindSafe},
};

/// Drops `value`, catching a panic of its `Drop`. The payload of such a panic is dropped the
/// same way once more, then leaked if its own `Drop` panics too.
pub(crate) fn drop_contained<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        log::error!(
            "keyed-dispatch: a drop panicked: {}",
            panic_message(&*payload)
        );
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
    }
}

/// Runs `f`, returning `None` (and dropping the payload, contained) if it panics.
pub(crate) fn contained<R>(f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            drop_contained(payload);
            None
        }
    }
}

/// Formats a key for the log with its `Debug`, or as `<Debug panicked>` if that panics.
pub(crate) struct ShowKey<'a, K: ?Sized>(pub(crate) &'a K);

impl<K: Debug + ?Sized> Display for ShowKey<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        contained(|| write!(f, "{:?}", self.0)).unwrap_or_else(|| f.write_str("<Debug panicked>"))
    }
}

/// Formats a value for the log with its `Display`, or as `<Display panicked>` if that panics.
pub(crate) struct Show<'a, T: ?Sized>(pub(crate) &'a T);

impl<T: Display + ?Sized> Display for Show<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        contained(|| write!(f, "{}", self.0)).unwrap_or_else(|| f.write_str("<Display panicked>"))
    }
}

/// The message of a panic payload, for the log.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "Box<dyn Any>"
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Panics when dropped, `.0` times over: with a payload that panics when dropped, and so on.
    struct PanicsOnDrop(u8);

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            if self.0 > 0 {
                std::panic::panic_any(PanicsOnDrop(self.0 - 1));
            }
        }
    }

    struct PanicsInDebug;

    impl Debug for PanicsInDebug {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("no")
        }
    }

    #[test]
    fn a_panicking_drop_is_contained() {
        drop_contained(PanicsOnDrop(1));
        assert_eq!(contained(|| -> u8 { panic!("no") }), None);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "leaks, by design, the payload of a drop that panicked thrice"
    )]
    fn a_payload_whose_drop_panics_again_is_leaked() {
        drop_contained(PanicsOnDrop(3));
    }

    #[test]
    fn a_panicking_debug_prints_a_placeholder() {
        assert_eq!(ShowKey(&PanicsInDebug).to_string(), "<Debug panicked>");
        assert_eq!(ShowKey(&7).to_string(), "7");
        assert_eq!(Show(&"x").to_string(), "x");
    }
}
