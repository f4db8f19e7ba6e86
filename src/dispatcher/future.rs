//! The async front: futures that wait for room, barriers and the drain without blocking a
//! thread. They need no runtime: each waits in the same lines as the threads do (see
//! `waiters`), leaving its task's waker, so that threads and tasks are served in one arrival
//! order.
//!
//! # Cancellation
//!
//! A future that is dropped while it waits leaves its line (step 3 of `waiters`): a
//! notification it had received and not used passes to the next waiter. [`DispatchAsync`]
//! holds its key and job until a poll hands them over: a poll either queues the job (and the
//! future resolves) or keeps it, so dropping the future drops a job that was never accepted,
//! once, and never one that was.

use super::{
    core::{Core, Item},
    permit::{Permit, Tried as Reserving},
    route::{Room, Tried},
    Dispatcher,
};
use crate::{
    error::{Bound, DispatchError, WaitError},
    gate::Refused,
    latch::Latch,
    mailbox::Mailbox,
    sync::Arc,
    waiters::Waiter,
};
use std::{
    fmt::{self, Debug},
    future::Future,
    hash::Hash,
    pin::Pin,
    task::{Context, Poll},
};

/// An async producer's place in a line for room, if it holds one, and the room a key granted
/// it, if it holds some (see `waiters`).
struct Line<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    core: &'a Core<K, J>,
    spot: Option<Spot<K, J>>,
    granted: Option<Arc<Mailbox<K, J>>>,
}

/// A waiter in the gate's line (no mailbox) or in a key's.
struct Spot<K, J> {
    waiter: Arc<Waiter>,
    mailbox: Option<Arc<Mailbox<K, J>>>,
}

impl<'a, K, J> Line<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn new(core: &'a Core<K, J>) -> Self {
        Line {
            core,
            spot: None,
            granted: None,
        }
    }

    /// Ready when not in line, or notified (which takes it out of line, keeping the room it
    /// was granted, if any).
    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(Spot { waiter, .. }) = &self.spot {
            if !waiter.poll(cx) {
                return Poll::Pending;
            }
            let spot = self.spot.take().expect("checked");
            self.core.counters.unblocked();
            if spot.waiter.granted() {
                self.granted = spot.mailbox;
            }
        }
        Poll::Ready(())
    }

    /// Gives back the room granted, if any.
    #[inline]
    fn release(&mut self) {
        if let Some(mailbox) = self.granted.take() {
            self.core.release_room(mailbox);
        }
    }

    /// Queues for `room`; false if room may have come meanwhile (try again at once).
    fn join(&mut self, room: Room<K, J>) -> bool {
        let core = self.core;
        let spot = match room {
            Room::Dispatcher => {
                // Checked first as well: room often frees before a producer would queue.
                if core.has_room() {
                    return false;
                }
                let waiter = core.room.enqueue();
                if core.has_room() {
                    core.room.dequeue(&waiter);
                    return false;
                }
                Spot {
                    waiter,
                    mailbox: None,
                }
            }
            Room::Key(mailbox) => {
                let Some(waiter) = mailbox.wait_in_line(core.config.key_capacity, &core.gate)
                else {
                    return false;
                };
                Spot {
                    waiter,
                    mailbox: Some(mailbox),
                }
            }
        };
        core.counters.blocking();
        self.spot = Some(spot);
        true
    }
}

impl<K, J> Drop for Line<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    #[inline]
    fn drop(&mut self) {
        if let Some(Spot { waiter, mailbox }) = self.spot.take() {
            match mailbox {
                None => self.core.room.abandon(&waiter),
                Some(mailbox) => {
                    if mailbox.leave_line(&waiter) {
                        self.core.list_idle(mailbox);
                    }
                }
            }
            self.core.counters.unblocked();
        }
        self.release();
    }
}

/// The future of [`Dispatcher::dispatch_async`].
#[must_use = "futures do nothing unless awaited"]
pub struct DispatchAsync<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    core: &'a Core<K, J>,
    hash: u64,
    /// The key and job, until a poll queues the job or the future resolves with them.
    pending: Option<(K, J)>,
    /// The group the job counts in (`Group::dispatch_async`), whose count the future undoes
    /// unless the job is accepted.
    group: Option<Arc<Latch>>,
    /// Its place in a line, made the first time it finds no room: a future that finds room
    /// at once (the common case) carries and drops no more than a key, a job and two words.
    line: Option<Box<Line<'a, K, J>>>,
}

impl<'a, K, J> DispatchAsync<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Hashes the key now, before the first poll; counts the job in `group`, if any.
    #[inline]
    pub(crate) fn new(core: &'a Core<K, J>, key: K, job: J, group: Option<Arc<Latch>>) -> Self {
        let hash = core.keys.hash(&key);
        if let Some(group) = &group {
            group.add();
        }
        DispatchAsync {
            core,
            hash,
            pending: Some((key, job)),
            group,
            line: None,
        }
    }

    /// The future resolved (or is dropped) with the job refused: undoes its group count.
    fn uncount(&mut self) {
        if let Some(group) = self.group.take() {
            group.refused();
        }
    }

    /// The room granted to the future in its key, if any.
    fn granted(&self) -> Option<&Arc<Mailbox<K, J>>> {
        self.line.as_ref()?.granted.as_ref()
    }

    /// The future resolved: a grant it held was used, or given back by `try_send_granted`.
    fn grant_spent(&mut self) {
        if let Some(line) = &mut self.line {
            line.granted = None;
        }
    }
}

impl<K, J> Drop for DispatchAsync<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    #[inline]
    fn drop(&mut self) {
        // The job, never accepted, goes with the future (a field dropped after this), and so
        // does its place in line.
        if self.group.is_some() {
            self.uncount();
        }
    }
}

// The key and the job are moved, never pinned.
impl<K, J> Unpin for DispatchAsync<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
}

impl<K, J> Future for DispatchAsync<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    type Output = Result<(), DispatchError<K, J>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(line) = &mut this.line {
                if line.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let core = this.core;
            let (key, job) = this
                .pending
                .take()
                .expect("DispatchAsync polled after it completed");
            let item = Item {
                job,
                group: this.group.clone(),
            };
            let tried = match this.granted() {
                Some(mailbox) => core.try_send_granted(mailbox, key, item),
                None => core.try_send(this.hash, key, item),
            };
            let (key, item, room) = match tried {
                Tried::Sent => {
                    // The job counts in its group now, until it has run.
                    this.group = None;
                    this.grant_spent();
                    return Poll::Ready(Ok(()));
                }
                Tried::Refused(err) => {
                    this.grant_spent();
                    this.uncount();
                    return Poll::Ready(Err(err));
                }
                Tried::NoRoom(key, item, room) => (key, item, room),
            };
            let line = this.line.get_or_insert_with(|| Box::new(Line::new(core)));
            // On a worker thread, waiting for room could deadlock: refused, as `dispatch` is.
            if core.pool.is_current() {
                let bound = match room {
                    Room::Dispatcher => Bound::Dispatcher,
                    Room::Key(_) => Bound::Key,
                };
                let job = item.job;
                line.release();
                this.uncount();
                return Poll::Ready(Err(core.refuse(DispatchError::Full { key, job, bound })));
            }
            this.pending = Some((key, item.job));
            line.join(room);
        }
    }
}

impl<K, J> Debug for DispatchAsync<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = self.line.as_ref().is_some_and(|line| line.spot.is_some());
        f.debug_struct("DispatchAsync")
            .field("key", &self.pending.as_ref().map(|(key, _)| key))
            .field("waiting", &waiting)
            .finish()
    }
}

/// The future of [`Dispatcher::reserve`].
#[must_use = "futures do nothing unless awaited"]
pub struct Reserve<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    line: Line<'a, K, J>,
    hash: u64,
    key: Option<K>,
}

impl<K, J> Unpin for Reserve<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
}

impl<'a, K, J> Future for Reserve<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    type Output = Result<Permit<'a, K, J>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if this.line.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let core = this.line.core;
            let key = this
                .key
                .as_ref()
                .expect("Reserve polled after it completed");
            let tried = match &this.line.granted {
                // The key granted room: the gate's is all that is missing.
                Some(_) => match core.try_enter() {
                    Ok(()) => Reserving::Held(this.line.granted.take().expect("checked")),
                    Err(Refused::Full) => Reserving::NoRoom(Room::Dispatcher),
                    Err(Refused::Closed) => {
                        this.line.release();
                        Reserving::Closed
                    }
                },
                None => core.try_reserve(this.hash, key),
            };
            let room = match tried {
                Reserving::Held(mailbox) => {
                    let key = this.key.take().expect("checked");
                    return Poll::Ready(Ok(Permit::new(core, key, mailbox)));
                }
                Reserving::Closed => return Poll::Ready(Err(WaitError::Closed)),
                Reserving::NoRoom(room) => room,
            };
            if core.pool.is_current() {
                this.line.release();
                return Poll::Ready(Err(WaitError::WouldDeadlock));
            }
            this.line.join(room);
        }
    }
}

impl<K, J> Debug for Reserve<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserve")
            .field("key", &self.key)
            .field("waiting", &self.line.spot.is_some())
            .finish()
    }
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Dispatches `job` on `key`, waiting for room without blocking a thread: the async
    /// [`dispatch`](Dispatcher::dispatch).
    ///
    /// Producers waiting for room in a key, threads in `dispatch` and tasks here alike, get it
    /// in the order they began to wait: room the key frees is held for the longest waiting, so
    /// that a producer arriving meanwhile queues behind. Room in the dispatcher's
    /// [`capacity`](crate::Builder::capacity) wakes the longest waiting, which may find it taken
    /// by a producer arriving at that moment, and waits again.
    ///
    /// The key is hashed here, before the future is first polled.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it resolves (say, a `select!` branch that lost) leaves the
    /// job either queued, if a poll had queued it, or never accepted and dropped with the
    /// future, once. It never loses an accepted job nor queues one twice. In a `select!` loop
    /// where the job must not be lost either, wait for room with [`reserve`](Dispatcher::reserve)
    /// instead, and give the job to the [`Permit`] once it is there.
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Dispatcher::dispatch): [`DispatchError::Closed`] once the dispatcher is
    /// closed (a waiting future wakes at once then); polled on a worker thread of the
    /// dispatcher's pool, where waiting could deadlock, [`DispatchError::Full`] at once if
    /// there is no room.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let d = Dispatcher::builder().key_capacity(1).build(|_: &u32, _: u32| {})?;
    /// for n in 0..100 {
    ///     d.dispatch_async(n % 3, n).await?; // waits for room on a full key
    /// }
    /// d.wait_idle_async().await?;
    /// assert_eq!(d.close_async().await.stats.completed, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn dispatch_async(&self, key: K, job: J) -> DispatchAsync<'_, K, J> {
        DispatchAsync::new(&self.core, key, job, None)
    }

    /// Waits, without blocking a thread, until there is room for one job of `key`, and holds
    /// it: the [`Permit`] queues the job without waiting and without being refused for room.
    /// Dropping the permit gives the room back. The cancel-safe form of
    /// [`dispatch_async`](Dispatcher::dispatch_async): the job stays with the caller until
    /// there is room for it.
    ///
    /// The room held counts in the key's capacity and the dispatcher's; `close` waits for the
    /// permit to be used or dropped. The key is cloned for the permit (and once more if it
    /// had no queue yet).
    ///
    /// # Errors
    ///
    /// [`WaitError::Closed`] once the dispatcher is closed; [`WaitError::WouldDeadlock`] when
    /// polled on a worker thread of the dispatcher's pool and there is no room.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let d = Dispatcher::builder().build(|_: &&str, n: u32| assert_eq!(n, 7))?;
    /// let permit = d.reserve(&"acct-1").await?;
    /// // Produce the job only now that it is sure to be accepted.
    /// permit.dispatch(7)?;
    /// d.flush_key_async(&"acct-1").await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve(&self, key: &K) -> Reserve<'_, K, J> {
        Reserve {
            hash: self.core.keys.hash(key),
            line: Line::new(&self.core),
            key: Some(key.clone()),
        }
    }

    /// Waits, without blocking a thread, until every job of `key` dispatched before the call
    /// has finished: the async [`flush_key`](Dispatcher::flush_key).
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] on a worker thread of the dispatcher's pool.
    pub async fn flush_key_async(&self, key: &K) -> Result<(), WaitError> {
        if self.core.pool().is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        if let Some(barrier) = self.core.flush_barrier(key) {
            barrier.finished().await;
        }
        Ok(())
    }

    /// Waits, without blocking a thread, until no job is queued or running and idle keys have
    /// been evicted: the async [`wait_idle`](Dispatcher::wait_idle), with the same errors.
    pub async fn wait_idle_async(&self) -> Result<(), WaitError> {
        self.core.wait_idle_async().await
    }

    /// Stops accepting jobs and waits, without blocking a thread, for every accepted job to
    /// finish; then finishes the shutdown as [`close`](Dispatcher::close) does (joining the
    /// threads, which have no job left by then). Producers waiting for room, threads and
    /// tasks, are woken at once and get [`DispatchError::Closed`] with their job.
    pub async fn close_async(&self) -> super::CloseReport {
        let closed = self.core.close_async().await;
        super::CloseReport {
            stats: closed.stats,
            drained: closed.drained,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::handler::BoxedJob;
    use std::mem::size_of;

    /// What an async producer waiting for room holds: its future (here with a `u64` key and a
    /// boxed job) and its place in line, its waiter (an `Arc`'s two counts beside it) and its
    /// slot in the line.
    #[test]
    fn a_waiting_producer_costs_under_200_bytes() {
        let future = size_of::<DispatchAsync<'_, u64, BoxedJob>>();
        let line = size_of::<Line<'_, u64, BoxedJob>>();
        let waiter = 2 * size_of::<usize>() + size_of::<Waiter>();
        let slot = size_of::<Arc<Waiter>>();
        let total = future + line + waiter + slot;
        println!("future {future} + line {line} + waiter {waiter} + slot {slot} = {total} bytes");
        assert!(total <= 200, "{total} bytes");
    }
}
