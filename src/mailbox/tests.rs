use super::*;
use crate::waiters::Wakeups;

fn turn(mb: &Mailbox<u8, u32>, max: usize) -> Vec<u32> {
    let mut batch = VecDeque::new();
    mb.begin_turn(max, &mut batch, &mut Marks::new());
    batch.into_iter().collect()
}

fn end(mb: &Mailbox<u8, u32>, leftovers: &mut VecDeque<u32>, halted: bool) -> EndTurn {
    let mut due = Marks::new();
    let end = mb.end_turn(leftovers, &mut due, halted);
    assert!(due.is_empty());
    end
}

#[test]
fn new_mailbox_is_queued_with_its_job() {
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    assert_eq!(mb.state(), State::Queued);
    assert_eq!(mb.len(), 1);
}

#[test]
fn pushes_behind_a_queued_key_do_not_schedule() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    assert_eq!(mb.push(11, &mut None, 8, &gate, || {}), Push::Added);
    let mut batch = VecDeque::new();
    assert_eq!(mb.begin_turn(8, &mut batch, &mut Marks::new()), 2);
    assert_eq!(mb.state(), State::Running);
    assert_eq!(mb.push(12, &mut None, 8, &gate, || {}), Push::Added);
    assert_eq!(batch, [10, 11]);
}

#[test]
fn capacity_counts_jobs_in_the_running_turn() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    let mut batch = VecDeque::new();
    mb.begin_turn(8, &mut batch, &mut Marks::new());
    assert_eq!(mb.push(11, &mut None, 1, &gate, || {}), Push::Added);
    assert_eq!(
        mb.push(12, &mut None, 1, &gate, || {}),
        Push::Full(12),
        "one job waits behind the running one"
    );
    assert_eq!(mb.push(12, &mut None, 0, &gate, || {}), Push::Full(12));
    batch.clear();
    assert_eq!(end(&mb, &mut batch, false), EndTurn::Requeue);
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    mb.begin_turn(8, &mut batch, &mut Marks::new());
    batch.clear();
    assert_eq!(end(&mb, &mut batch, false), EndTurn::Idle { list: true });
    assert_eq!(mb.push(11, &mut None, 0, &gate, || {}), Push::Schedule);
}

#[test]
fn turn_takes_at_most_max_and_requeues_the_rest() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    for job in 1..5 {
        mb.push(job, &mut None, 100, &gate, || {});
    }
    assert_eq!(turn(&mb, 3), [0, 1, 2]);
    assert_eq!(end(&mb, &mut VecDeque::new(), false), EndTurn::Requeue);
    assert_eq!(mb.state(), State::Queued);
    assert_eq!(turn(&mb, 3), [3, 4]);
}

#[test]
fn idle_key_is_listed_once() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    turn(&mb, 8);
    let mut none = VecDeque::new();
    assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: true });
    assert_eq!(mb.push(1, &mut None, 8, &gate, || {}), Push::Schedule);
    turn(&mb, 8);
    assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: false });
}

#[test]
fn a_key_listed_or_scheduled_since_the_last_sweep_gets_a_second_chance() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    turn(&mb, 8);
    let mut none = VecDeque::new();
    assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: true });
    assert!(mb.second_chance(), "listed since the last sweep");
    assert!(!mb.second_chance(), "idle from one sweep to the next");
    assert_eq!(mb.push(1, &mut None, 8, &gate, || {}), Push::Schedule);
    assert!(mb.second_chance(), "scheduled since it was listed");
    assert!(!mb.second_chance(), "the chance was used up");
    turn(&mb, 8);
    assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: false });
    assert!(mb.try_evict());
    assert!(!mb.second_chance(), "evicted: not listed any more");
}

#[test]
fn only_an_idle_key_is_evicted() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    assert!(!mb.try_evict(), "queued");
    turn(&mb, 8);
    assert!(!mb.try_evict(), "running");
    end(&mb, &mut VecDeque::new(), false);
    assert!(mb.try_evict());
    assert_eq!(mb.state(), State::Evicted);
    let _ = gate;
}

#[test]
fn halted_turn_puts_leftovers_back_in_order() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    for job in 1..4 {
        mb.push(job, &mut None, 100, &gate, || {});
    }
    let mut batch = VecDeque::new();
    mb.begin_turn(8, &mut batch, &mut Marks::new());
    mb.push(4, &mut None, 100, &gate, || {});
    batch.pop_front(); // job 0 ran
    assert_eq!(end(&mb, &mut batch, true), EndTurn::Halted);
    gate.halt();
    assert!(matches!(
        mb.push(5, &mut None, 100, &gate, || {}),
        Push::Halted(5)
    ));
    let (left, flushes, _) = mb.take_all(&mut Wakeups::default());
    assert_eq!(left, [1, 2, 3, 4]);
    assert!(flushes.is_empty());
    assert_eq!(mb.state(), State::Evicted);
}

#[test]
fn flush_of_an_idle_key_has_nothing_to_wait_for() {
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    turn(&mb, 8);
    end(&mb, &mut VecDeque::new(), false);
    assert!(mb.flush().is_none());
}

#[test]
fn flush_barrier_is_due_after_the_jobs_pushed_before_it() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    mb.push(1, &mut None, 100, &gate, || {});
    let first = mb.flush().expect("jobs are queued");
    let again = mb.flush().expect("jobs are queued");
    assert!(Arc::ptr_eq(&first, &again), "same position, same barrier");
    mb.push(2, &mut None, 100, &gate, || {});
    let second = mb.flush().expect("jobs are queued");
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    assert_eq!(mb.begin_turn(8, &mut batch, &mut due), 3);
    // The first barrier is due once two jobs of the batch have finished, the second after
    // three.
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].position, 2);
    assert!(Arc::ptr_eq(&due[0].state, &first));
    assert_eq!(due[1].position, 3);
    assert!(Arc::ptr_eq(&due[1].state, &second));
}

#[test]
fn flush_during_a_turn_is_handed_out_when_the_turn_ends() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    mb.push(1, &mut None, 100, &gate, || {});
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    assert!(due.is_empty());
    let during = mb.flush().expect("the turn is running");
    mb.push(2, &mut None, 100, &gate, || {});
    let behind = mb.flush().expect("a job is queued");
    batch.clear();
    assert_eq!(mb.end_turn(&mut batch, &mut due, false), EndTurn::Requeue);
    assert_eq!(due.len(), 1, "only the barrier behind the turn's jobs");
    assert!(Arc::ptr_eq(&due[0].state, &during));
    due.clear();
    mb.begin_turn(8, &mut batch, &mut due);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].position, 1, "due after the one job of this turn");
    assert!(Arc::ptr_eq(&due[0].state, &behind));
}

#[test]
fn halted_turn_keeps_its_unreached_barriers_for_take_all() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    mb.push(1, &mut None, 100, &gate, || {});
    let first = mb.flush().expect("jobs are queued");
    mb.push(2, &mut None, 100, &gate, || {});
    let second = mb.flush().expect("jobs are queued");
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    // Jobs 0 and 1 ran, so the first barrier was completed in the turn; job 2 did not.
    batch.drain(..2);
    due.pop_front();
    gate.halt();
    assert_eq!(mb.end_turn(&mut batch, &mut due, true), EndTurn::Halted);
    assert!(due.is_empty());
    let (left, flushes, _) = mb.take_all(&mut Wakeups::default());
    assert_eq!(left, [2]);
    assert_eq!(flushes.len(), 1);
    assert!(Arc::ptr_eq(&flushes[0].state, &second));
    drop(first);
}

#[test]
fn grouped_jobs_get_a_mark_and_plain_jobs_none() {
    let gate = Gate::new();
    let group = Arc::new(Latch::new(0));
    let mb = Mailbox::new(1u8, 0, 0u32, Some(Arc::clone(&group)));
    mb.push(1, &mut None, 100, &gate, || {});
    let mut member = Some(Arc::clone(&group));
    assert_eq!(mb.push(2, &mut member, 100, &gate, || {}), Push::Added);
    assert!(member.is_none(), "the mailbox took the group with the job");
    // A flush behind job 2 shares no state with job 2's group.
    let barrier = mb.flush().expect("jobs are queued");
    assert!(!Arc::ptr_eq(&barrier, &group));
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    let positions: Vec<u64> = due.iter().map(|mark| mark.position).collect();
    assert_eq!(
        positions,
        [1, 3, 3],
        "after jobs 0 and 2, and the barrier after job 2"
    );
    assert!(Arc::ptr_eq(&due[2].state, &barrier));
}

#[test]
fn refused_push_leaves_the_group_with_the_caller() {
    let gate = Gate::new();
    let group = Arc::new(Latch::new(0));
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    let mut member = Some(Arc::clone(&group));
    assert_eq!(mb.push(1, &mut member, 0, &gate, || {}), Push::Full(1));
    assert!(member.is_some());
    gate.halt();
    assert_eq!(mb.push(1, &mut member, 10, &gate, || {}), Push::Halted(1));
    assert!(member.is_some());
    let (left, marks, _) = mb.take_all(&mut Wakeups::default());
    assert_eq!(left, [0]);
    assert!(marks.is_empty());
}

#[test]
fn a_turn_goes_on_with_jobs_pushed_during_its_batch() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    assert_eq!(mb.queued_hint(), 0);
    assert_eq!(mb.push(1, &mut None, 100, &gate, || {}), Push::Added);
    assert_eq!(mb.push(2, &mut None, 100, &gate, || {}), Push::Added);
    assert_eq!(
        mb.queued_hint(),
        2,
        "the hint counts the jobs behind the batch"
    );
    batch.clear(); // job 0 ran
    assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 2);
    assert_eq!(batch, [1, 2]);
    assert_eq!(mb.state(), State::Running);
    assert_eq!(mb.len(), 2, "the new batch counts against the capacity");
    assert_eq!(
        mb.push(3, &mut None, 100, &gate, || {}),
        Push::Added,
        "no schedule"
    );
    batch.clear();
    assert_eq!(end(&mb, &mut batch, false), EndTurn::Requeue);
}

#[test]
fn a_turn_with_nothing_behind_its_batch_ends_idle() {
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    batch.clear();
    assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 0);
    assert!(batch.is_empty() && due.is_empty());
    assert_eq!(end(&mb, &mut batch, false), EndTurn::Idle { list: true });
}

#[test]
fn going_on_hands_out_the_batch_barriers_before_the_next_jobs_marks() {
    let gate = Gate::new();
    let group = Arc::new(Latch::new(0));
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    mb.begin_turn(8, &mut batch, &mut due);
    let barrier = mb.flush().expect("the batch is running");
    let mut member = Some(Arc::clone(&group));
    assert_eq!(mb.push(1, &mut member, 100, &gate, || {}), Push::Added);
    batch.clear();
    assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 1);
    let positions: Vec<u64> = due.iter().map(|mark| mark.position).collect();
    assert_eq!(
        positions,
        [0, 1],
        "the barrier before job 1, the group after it"
    );
    assert!(Arc::ptr_eq(&due[0].state, &barrier));
    assert!(Arc::ptr_eq(&due[1].state, &group));
}

#[test]
fn an_evicted_mailbox_is_reused_for_another_key() {
    let group = Arc::new(Latch::new(0));
    let mut mb = Mailbox::new(1u8, 0, 0u32, None);
    turn(&mb, 8);
    end(&mb, &mut VecDeque::new(), false);
    assert!(mb.try_evict());
    assert!(mb.retire());
    assert!(mb.key.is_none(), "a spare does not keep its old key alive");
    mb.reuse(2, 0, 20, Some(Arc::clone(&group)));
    assert_eq!((*mb.key(), mb.state(), mb.len()), (2, State::Queued, 1));
    assert!(mb.queued_hint() > 0);
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    assert_eq!(mb.begin_turn(8, &mut batch, &mut due), 1);
    assert_eq!(batch, [20]);
    assert_eq!(
        due.len(),
        1,
        "the job's group, counted from the reused mailbox's start"
    );
    assert_eq!(due[0].position, 1);
    assert_eq!(
        end(&mb, &mut VecDeque::new(), false),
        EndTurn::Idle { list: true }
    );
}

#[test]
fn a_new_mailbox_is_taken_apart_again() {
    let group = Arc::new(Latch::new(1));
    let mut mb = Mailbox::new(3u8, 0, 30u32, Some(Arc::clone(&group)));
    let (key, job, member) = mb.unmake();
    assert_eq!((key, job), (3, 30));
    assert!(member.is_some_and(|member| Arc::ptr_eq(&member, &group)));
    assert_eq!(mb.state(), State::Evicted);
    assert!(mb.retire(), "it is a spare");
}

#[test]
fn room_wait_times_out_on_a_full_key() {
    let mb = Mailbox::new(1u8, 0, 0u32, None);
    let gate = Gate::new();
    let timed_out = mb.wait_for_room(0, Some(Instant::now()), &gate);
    assert_eq!(timed_out, Waited::TimedOut);
    assert_eq!(mb.wait_for_room(1, None, &gate), Waited::Retry);
    gate.close();
    assert_eq!(
        mb.wait_for_room(0, None, &gate),
        Waited::Retry,
        "a closed dispatcher has its producers retry, to be refused"
    );
}

/// Room freed at a batch's end goes to the waiting producer as a grant, held for it: a
/// producer arriving meanwhile finds the key full, and the granted one's job goes in.
#[test]
fn freed_room_is_granted_to_the_waiting_producer() {
    let mb = Arc::new(Mailbox::new(1u8, 0, 0u32, None));
    let gate = Gate::new();
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    assert_eq!(mb.begin_turn(1, &mut batch, &mut due), 1);
    let waiter = {
        let mb = Arc::clone(&mb);
        let gate = Gate::new();
        std::thread::spawn(move || mb.wait_for_room(0, None, &gate))
    };
    while lock(&mb.inner).waiting.is_empty() {
        std::thread::yield_now();
    }
    batch.clear();
    assert_eq!(
        mb.end_turn(&mut batch, &mut due, false),
        EndTurn::Idle { list: true }
    );
    assert_eq!(waiter.join().unwrap(), Waited::Granted);
    let refused = mb.push(9, &mut None, 0, &gate, || {});
    assert_eq!(refused, Push::Full(9), "the granted room is held");
    let pushed = mb.push_reserved(1, None, &mut None, &gate, || {});
    assert_eq!(pushed, Push::Schedule);
}

/// Running -> Waiting when the head job is to be retried: the job goes back first with its
/// attempts, pushes do not schedule, a sweep does not evict, and the timer makes it Queued
/// (once: a second look finds it no longer Waiting). The next turn takes the attempts.
#[test]
fn retried_head_job_waits_then_is_queued_by_the_timer() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    mb.push(11, &mut None, 8, &gate, || {});
    let mut batch = VecDeque::new();
    let mut due = Marks::new();
    assert_eq!(
        mb.begin_turn_attempts(8, &mut batch, &mut due),
        Some((2, 0))
    );
    // Job 10 failed its first attempt: it and the unstarted 11 go back.
    let end = mb.end_turn_as(&mut batch, &mut due, Stop::Backoff { attempts: 1 });
    assert_eq!(end, EndTurn::Backoff);
    assert_eq!(mb.state(), State::Waiting);
    assert_eq!(mb.push(12, &mut None, 8, &gate, || {}), Push::Added);
    assert!(!mb.try_evict(), "a Waiting key is not evicted");
    assert_eq!(mb.backoff_over(), Woken::Schedule);
    assert_eq!(mb.state(), State::Queued);
    assert_eq!(mb.backoff_over(), Woken::Gone);
    assert_eq!(
        mb.begin_turn_attempts(8, &mut batch, &mut due),
        Some((3, 1))
    );
    assert_eq!(batch, [10, 11, 12]);
}

/// Idle, paused -> Held on a push; Held -> Queued on resume; a paused Idle key is not
/// evicted; a paused key's turn takes no job and leaves it Held.
#[test]
fn paused_key_holds_its_jobs_until_resumed() {
    let gate = Gate::new();
    let mb = Mailbox::new_paused(1u8, 0);
    assert_eq!(mb.state(), State::Idle);
    assert!(mb.stop_hint());
    assert!(!mb.try_evict(), "a paused key is not evicted");
    assert_eq!(mb.push(10, &mut None, 8, &gate, || {}), Push::Held);
    assert_eq!(mb.state(), State::Held);
    assert_eq!(mb.push(11, &mut None, 8, &gate, || {}), Push::Added);
    let resumed = mb.resume();
    assert!(resumed.was_paused && resumed.schedule && !resumed.list);
    assert_eq!(mb.state(), State::Queued);
    assert!(!mb.stop_hint());
    // Paused again while Queued: its turn takes nothing and leaves it Held.
    assert_eq!(mb.pause(&gate), Some(true));
    assert_eq!(mb.pause(&gate), Some(false), "already paused");
    let mut batch = VecDeque::new();
    let mut due = Marks::new();
    assert_eq!(
        mb.begin_turn_attempts(8, &mut batch, &mut due),
        Some((0, 0))
    );
    assert_eq!(
        mb.end_turn_as(&mut batch, &mut due, Stop::Ran),
        EndTurn::Held
    );
    assert_eq!(mb.len(), 2);
    gate.close();
    assert_eq!(mb.pause(&gate), None, "no pause once closed");
}

/// A running turn stopped at the hint puts the rest back with the head's attempts; cancel
/// then takes them in order and leaves the key Idle, to be listed.
#[test]
fn cancel_takes_held_jobs_in_order_and_leaves_the_key_idle() {
    let gate = Gate::new();
    let mb = Mailbox::new(1u8, 0, 10u32, None);
    mb.push(11, &mut None, 8, &gate, || {});
    let mut batch = VecDeque::new();
    let mut due = Marks::new();
    mb.begin_turn_attempts(8, &mut batch, &mut due);
    assert_eq!(mb.pause(&gate), Some(true));
    // Job 10 ran; 11 was not started.
    batch.pop_front();
    let end = mb.end_turn_as(&mut batch, &mut due, Stop::Stopped { attempts: 0 });
    assert_eq!(end, EndTurn::Held);
    let cancelled = mb.cancel().expect("live");
    assert_eq!(cancelled.jobs, [11]);
    assert!(cancelled.was_held && cancelled.list);
    assert_eq!(mb.state(), State::Idle);
    assert_eq!(mb.len(), 0);
}

#[test]
fn close_timeout_takes_a_key_unless_a_turn_holds_it_and_a_late_turn_leaves_it() {
    let gate = Gate::new();
    let (mut batch, mut due) = (VecDeque::new(), Marks::new());
    // Running: not taken, and its jobs stay.
    let mb = Mailbox::new(1u8, 0, 1u32, None);
    assert_eq!(mb.push(2, &mut None, 8, &gate, || {}), Push::Added);
    assert_eq!(mb.begin_turn(1, &mut batch, &mut due), 1);
    assert!(mb
        .take_all_unless_running(&mut Wakeups::default())
        .is_none());
    assert_eq!(mb.len(), 2);
    // Queued (popped by a worker that has not begun its turn yet): taken whole, and the turn
    // that begins afterwards finds the key Evicted and takes nothing.
    let mb = Mailbox::new(2u8, 0, 3u32, None);
    assert_eq!(mb.push(4, &mut None, 8, &gate, || {}), Push::Added);
    let (taken, _, paused, held) = mb
        .take_all_unless_running(&mut Wakeups::default())
        .expect("no turn holds it");
    assert_eq!((Vec::from(taken), paused, held), (vec![3, 4], false, false));
    let (mut late, mut late_due) = (VecDeque::new(), Marks::new());
    assert_eq!(mb.begin_turn_attempts(8, &mut late, &mut late_due), None);
    assert_eq!(mb.state(), State::Evicted);
    assert!(late.is_empty() && late_due.is_empty());
}

#[test]
fn stamps_follow_the_jobs_that_never_started_through_a_retry_and_a_halt() {
    use std::time::{Duration, Instant};
    let gate = Gate::new();
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut mb = Mailbox::new(1u8, 0, 10u32, None);
    mb.stamp_first(at(0));
    for (job, ms) in [(11, 1), (12, 2)] {
        let pushed = mb.push_stamped(job, Some(at(ms)), &mut None, 8, &gate, || {});
        assert_eq!(pushed, Push::Added);
    }
    let (mut batch, mut due, mut stamps) = (VecDeque::new(), Marks::new(), VecDeque::new());
    assert_eq!(
        mb.begin_turn_stamped(8, &mut batch, &mut due, &mut stamps),
        Some((3, 0))
    );
    assert_eq!(stamps, [at(0), at(1), at(2)]);
    // Job 10 started (its stamp used) and fails; 11 and 12 go back with theirs.
    stamps.pop_front();
    let stop = Stop::Backoff { attempts: 1 };
    assert_eq!(
        mb.end_turn_stamped(&mut batch, &mut due, stop, &mut stamps),
        EndTurn::Backoff
    );
    mb.backoff_over();
    // The retried head has no stamp; the two behind it keep theirs.
    assert_eq!(
        mb.begin_turn_stamped(2, &mut batch, &mut due, &mut stamps),
        Some((2, 1))
    );
    assert_eq!(
        (Vec::from(batch.clone()), Vec::from(stamps.clone())),
        (vec![10, 11], vec![at(1)])
    );
    batch.clear();
    stamps.clear();
    assert_eq!(
        mb.end_turn_stamped(&mut batch, &mut due, Stop::Ran, &mut stamps),
        EndTurn::Requeue
    );
    let (taken, _, _) = mb.take_all(&mut Wakeups::default());
    assert_eq!(Vec::from(taken), [12]);
}
