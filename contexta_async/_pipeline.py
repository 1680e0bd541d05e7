"""The capture pipeline: bounded queue, one writer thread, group commit, flush barrier.

The writer takes everything queued (up to ``max_batch_size``), hands the batch to delivery
(``_delivery``: every sink encodes it once and writes + fsyncs it per file, with retries and
failure accounting), then acknowledges the batch: flush() waiters whose records are now durable
wake up. There is no timer: under light load a record is durable about one fsync after it was
queued; under load batches grow.

The writer is one daemon thread per context, started on first use (or by ``async with
Contexta()``). Encoding needs the GIL wherever it runs, so a thread costs the event loop nothing
extra, and it removes the two hand-offs per batch that a writer task in the loop needed (loop
-> I/O thread -> loop); see docs/performance.md for the measured effect. Being its own thread, the
writer cannot be cancelled by the caller's cancel scopes, and being a daemon, a sink stuck in
``write`` cannot hang interpreter exit (nor can the threads waiting on it: see the exit watch).
Producers on any thread or loop share the same thread-safe queue.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel
import msgspec

from ._buffer import DROPPED, QUEUED, WAIT, Admitted, BoundedBuffer, OverflowPolicy
from ._delivery import Delivery
from ._errors import (
    ClosedScopeError,
    ConfigurationError,
    ContextaError,
    FlushTimeoutError,
    LifecycleError,
    ShutdownTimeoutError,
    WriterStoppedError,
)
from ._format.lines import Item
from ._log import log
from ._validation import check_timeout, timeout_seconds
from ._waiters import READY, AsyncWaiter, ThreadWaiter, Waiter, WaiterT, async_waiter
from .sinks import Sink

__all__ = ["OverflowPolicy", "Pipeline", "PipelineOptions", "Statistics"]


_POLICIES: Final = ("wait", "drop_newest", "raise")
_TURN_CHECK: Final = 0.1  # seconds between the idle writer's looks at a stalled turn
_EXIT_CHECK: Final = 0.1  # seconds between the exit watch's looks at the writers
_YIELD_EVERY_MASK: Final = 255  # an awaited capture yields to the event loop every 256th call
_MAX_RETRY_BACKOFF: Final = 3600  # seconds: the longest first wait before retrying a write


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    queue_size: int = 16_384
    max_batch_size: int = 8_192
    overflow: OverflowPolicy = "wait"
    shutdown_timeout: float = 10.0
    max_retries: int = 3
    retry_backoff: float = 0.05

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_batch_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(name, "must be a positive integer", value)
        if type(self.max_retries) is not int or self.max_retries < 0:
            raise ConfigurationError(
                "max_retries", "must be a non-negative integer", self.max_retries
            )
        for name in ("shutdown_timeout", "retry_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigurationError(name, "must be a non-negative number of seconds", value)
        # Past what the platform can wait (10**400 too) means no limit: inf, which closing
        # can wait on, where such an int raised OverflowError.
        object.__setattr__(self, "shutdown_timeout", timeout_seconds(self.shutdown_timeout))
        if self.overflow not in _POLICIES:
            raise ConfigurationError("overflow", f"must be one of {list(_POLICIES)}", self.overflow)
        if not self.retry_backoff <= _MAX_RETRY_BACKOFF:  # the writer sleeps it: inf would stop it
            raise ConfigurationError(
                "retry_backoff",
                f"must be a number of seconds from 0 to {_MAX_RETRY_BACKOFF}",
                self.retry_backoff,
            )


class Statistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the pipeline's counters."""

    queued: int
    """Lines in the queue now."""
    waiting_producers: int
    """Producers parked until the queue has room."""
    enqueued: int
    """Lines accepted into the queue since the start."""
    written: int
    """Lines written and (with fsync on) fsynced, summed over sinks."""
    fsyncs: int
    """fsync calls that succeeded (one per file per batch)."""
    batches: int
    """Batches the writer has taken (group commits)."""
    largest_batch: int
    """The most lines taken in one batch."""
    peak_queued: int
    """The most lines ever waiting in the queue at once: ``queue_size`` at most for captures;
    scope lifecycle lines, which are never refused, may go past it by the scopes opened and
    closed while it is full."""
    failed: int
    """Captured lines a sink could not make durable after retries, summed over sinks: the sum
    of ``failed`` over the DeliveryErrors raised (DEGRADATION lines are not counted)."""
    dropped: int
    """Lines refused by the ``drop_newest`` overflow policy."""
    retries: int
    """Failed writes that were retried."""


_open_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_all_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()  # started or not, for fork


@atexit.register
def _close_at_exit() -> None:
    # A sync program that never closed its context must not lose what it captured.
    _exit_closing.set()
    pipelines = list(_open_pipelines)
    # Every close begins first, so that the writers drain side by side and the deadlines share
    # one start: exit takes one shutdown_timeout however many contexts are stuck, not the sum.
    for pipeline in pipelines:
        try:
            if pipeline.before_exit is not None:
                pipeline.before_exit()
        except Exception as exc:
            _report_at_exit(exc)
        pipeline._begin_close()
    started = time.monotonic()
    for pipeline in pipelines:
        try:  # shutdown_timeout is a float, inf for no limit (PipelineOptions)
            pipeline.close_blocking(started + pipeline.options.shutdown_timeout)
        except Exception as exc:
            _report_at_exit(exc)


def _report_at_exit(exc: Exception) -> None:
    # report, never raise out of interpreter shutdown
    log("error", "contexta_async.close_at_exit_failed", error=str(exc))
    with contextlib.suppress(Exception):  # stderr may be closed too
        print(f"contexta-async: {exc}", file=sys.stderr)


# Python joins the non-daemon threads before it runs atexit hooks. A thread parked on a full
# queue behind a sink stuck in write would keep it joining forever, and the at-exit close (and
# its shutdown_timeout) would never come. So threading's own exit hook, which runs before that
# join, starts the exit watch: a writer that makes no progress for shutdown_timeout while
# threads wait on it is given up (Pipeline.give_up_at_exit), which lets those threads go.
# threading runs its exit hooks last-registered first, and concurrent.futures' hook joins the
# executors' threads: it is imported first so that it registers before this one.
_exit_begun = threading.Event()  # threading's shutdown began
_exit_closing = threading.Event()  # the at-exit close runs: the exit watch ends
_exit_watch_lock = threading.Lock()
_exit_watch: threading.Thread | None = None
try:
    import concurrent.futures.thread  # noqa: F401

    threading._register_atexit(_exit_begun.set)  # type: ignore[attr-defined]
except RuntimeError:  # imported while the interpreter already shuts down: exit is under way
    _exit_begun.set()


def _watch_exit() -> None:
    _exit_begun.wait()
    while not _exit_closing.wait(_EXIT_CHECK):
        now = time.monotonic()
        for pipeline in list(_open_pipelines):
            try:
                pipeline.check_stuck_at_exit(now)
            except Exception:  # (its log call on a closed stdout) the others are still watched
                pass


def _start_exit_watch() -> None:
    """Start the exit watch (one daemon thread per process, idle until exit) with the first
    writer: Python 3.12 refuses to start threads once its shutdown has begun."""
    global _exit_watch
    with _exit_watch_lock:
        if _exit_watch is None:
            _exit_watch = threading.Thread(
                target=_watch_exit, name="contexta-async-exit-watch", daemon=True
            )
            _exit_watch.start()


def _reinit_pipelines_after_fork() -> None:
    global _exit_watch, _exit_watch_lock
    _exit_watch, _exit_watch_lock = None, threading.Lock()  # no thread crosses a fork
    for pipeline in list(_all_pipelines):
        pipeline.reinit_after_fork()


# A forked child has no writer thread, and any lock a thread held at the fork stays held in it.
os.register_at_fork(after_in_child=_reinit_pipelines_after_fork)


def _blocking_timeout(seconds: float | None) -> float | None:
    """A timeout for threading's waits: None (no limit) from inf or anything past what the
    platform can wait (``threading.TIMEOUT_MAX``)."""
    return None if seconds is None or seconds >= threading.TIMEOUT_MAX else seconds


def _again(exc: ContextaError) -> ContextaError:
    """A copy of ``exc`` to raise once more: every caller of one close raises its outcome, and
    one exception object raised on several threads would mix their tracebacks."""
    clone = type(exc).__new__(type(exc), *exc.args)
    clone.__dict__.update(exc.__dict__)
    return clone


class Pipeline:
    def __init__(self, sinks: Sequence[Sink], options: PipelineOptions) -> None:
        self.sinks = tuple(sinks)
        self.options = options
        self._max_batch = options.max_batch_size
        self._closed = False  # the close began: the queue takes no new line
        self._close_finished = False  # a close is over: its outcome below is final
        self._close_outcome: ContextaError | None = None  # what that close raised
        self.before_exit: Callable[[], None] | None = None  # the client's hook, run at exit
        self._start_afresh()
        _all_pipelines.add(self)

    def _start_afresh(self) -> None:
        """The state of this process's pipeline: set at creation, and again after a fork."""
        self._buffer: BoundedBuffer[Item] = BoundedBuffer(
            self.options.queue_size, self.options.overflow
        )
        self._state_lock = threading.Lock()
        self._close_lock = threading.Lock()  # one close decides the outcome and who closes sinks
        self._processed = 0  # sequence number up to which every line was handled
        self._flush_waiters: list[tuple[int, AsyncWaiter | ThreadWaiter]] = []
        self._delivery = Delivery(
            self.sinks,
            queue_size=self.options.queue_size,
            max_retries=self.options.max_retries,
            retry_backoff=self.options.retry_backoff,
        )
        self._counts = Counter[str]()  # batches, largest_batch
        self._writer_started = False
        self._writer_done = threading.Event()
        self._settled = threading.Event()  # the writer ended or a close is over: closers go
        self._gave_up = False  # a close timed out on the writer: nobody waits for it any more
        self._exit_progress = -1  # the exit watch's last look: lines handled...
        self._exit_since = 0.0  # ...and since when, with threads waiting
        self._host: threading.Thread | None = None
        self._crash: str | None = None  # what stopped the writer, if it stopped unexpectedly
        self._fast_puts = 0

    # ---- producers -------------------------------------------------------------------

    def _ensure_writer(self) -> None:
        if not self._writer_started:
            with self._state_lock:
                if self._closed:
                    raise ClosedScopeError("the Contexta context is closed")
                if not self._writer_started:
                    self._start_host_locked()

    # Every line goes through BoundedBuffer.offer, which decides what a full queue means for
    # it (the policy table is there); these methods only act on its answer.

    def submit_nowait(self, item: Item) -> None:
        """Queue without waiting; a full queue drops (``drop_newest``) or raises."""
        if not self._writer_started:
            self._ensure_writer()
        if self._buffer.offer(item, "record_nowait") is DROPPED:
            self._delivery.count_drop(item.run_ref)

    def submit_awaitable(self, item: Item) -> Awaitable[None]:
        """Queue ``item``; the result is awaited to wait for room without blocking the loop.

        With room (the usual case) the line is queued before this returns and the awaitable is
        already done, so the fast path creates no coroutine.
        """
        if not self._writer_started:
            self._ensure_writer()
        outcome = self._buffer.offer(item, "record")
        if outcome is QUEUED:
            self._fast_puts += 1
            if self._fast_puts & _YIELD_EVERY_MASK:
                return READY
            # Now and then the fast path yields, so that a coroutine capturing in a tight loop
            # cannot hold the event loop (and every other task in it) until the queue fills.
            return anyio.lowlevel.checkpoint()
        if outcome is DROPPED:
            self._delivery.count_drop(item.run_ref)
            return READY
        return self._wait_for_room(item)  # WAIT: the line is parked once this is awaited

    async def _wait_for_room(self, item: Item) -> None:
        waiter = self._buffer.offer(item, "record", async_waiter)
        if isinstance(waiter, Admitted):  # room appeared meanwhile: queued
            return
        try:
            await waiter.wait()
        except BaseException:
            self.waiting_ended(waiter)  # cancelled: the line is not captured unless it got in
            raise
        if self._crash is not None:  # woken because the writer stopped: the line was dropped
            raise self._stopped()
        self._buffer.pass_turn(waiter)

    def submit_blocking(self, item: Item) -> None:
        """Queue ``item``, blocking this thread while the queue is full.

        On an event loop's thread that blocks the loop: async code uses submit_awaitable.
        """
        if not self._writer_started:
            self._ensure_writer()
        outcome = self._buffer.offer(item, "record", ThreadWaiter)
        if outcome is QUEUED:
            return
        if outcome is DROPPED:
            self._delivery.count_drop(item.run_ref)
            return
        assert outcome is not WAIT  # a waiter was given
        try:
            outcome.wait()
        except BaseException:  # KeyboardInterrupt: the call raises, so the line must not land
            self.waiting_ended(outcome)
            raise
        if self._crash is not None:  # woken because the writer stopped: the line was dropped
            raise self._stopped()
        self._buffer.pass_turn(outcome)

    # ---- lifecycle lines ---------------------------------------------------------------
    # Never dropped or refused, and a closing line never waits (see BoundedBuffer.offer).
    # ScopeCore keeps the two in order: the opening line is queued or parked under the
    # scope's lock, and closing queues a parked opening line first (queue_parked_now).

    def queue_opening(self, item: Item, make_waiter: Callable[[], WaiterT]) -> WaiterT | None:
        """Queue an opening line now (None), or park it with a new waiter that is woken once
        it is queued. Never blocks."""
        if not self._writer_started:
            self._ensure_writer()
        outcome = self._buffer.offer(item, "opening", make_waiter)
        return None if isinstance(outcome, Admitted) else outcome  # openings are never dropped

    def waiting_ended(self, waiter: Waiter) -> bool:
        """A producer stops waiting before being woken (cancelled, interrupted): withdraw its
        line if still parked (True: it will never be written), else give up its turn."""
        if self._buffer.unpark(waiter):
            return True
        self._buffer.pass_turn(waiter, leaving=True)
        return False

    def pass_turn(self, waiter: Waiter) -> None:
        """A producer woken after waiting for room runs: the turn goes on (see _buffer)."""
        self._buffer.pass_turn(waiter)

    def queue_parked_now(self, item: Item) -> None:
        """If ``item`` is parked, queue it now (past the bound) and wake its producer."""
        self._buffer.queue_parked_now(item)

    def submit_closing(self, item: Item) -> None:
        """Queue a scope's closing line past the bound: it must neither wait nor be lost."""
        if not self._writer_started:
            self._ensure_writer()
        self._buffer.offer(item, "closing")

    # ---- the writer ------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread now (it otherwise starts with the first capture)."""
        self._ensure_writer()

    def _start_host_locked(self) -> None:
        self._writer_started = True
        self._host = threading.Thread(
            target=self._run_writer, name="contexta-async-writer", daemon=True
        )
        _open_pipelines.add(self)
        self._host.start()
        _start_exit_watch()

    def _run_writer(self) -> None:
        """The writer thread: drain the queue until it is closed and empty."""
        buffer = self._buffer
        try:
            while True:
                batch, last_seq = buffer.take(self._max_batch, None)
                if not batch:
                    waiter = ThreadWaiter()
                    batch, last_seq = buffer.take(self._max_batch, waiter)
                    if not batch:
                        if not buffer.closed:
                            # Producers still waiting for their turn: look again soon, in case
                            # the one that should pass it on never runs.
                            waiter.wait(_TURN_CHECK if buffer.turns_pending else None)
                            continue
                        # Closed since that look: what was queued before the close is taken
                        # (nothing can be queued after it).
                        batch, last_seq = buffer.take(self._max_batch, None)
                        if batch:
                            self._deliver(batch, last_seq)
                            continue
                        if self._delivery.owes_lines:
                            # One last try at the DEGRADATION lines still owed to the sinks.
                            self._deliver([], last_seq)
                        break
                self._deliver(batch, last_seq)
        except BaseException as exc:  # a bug, not an I/O failure (those are caught per chunk)
            self._writer_crashed(exc)
        finally:
            buffer.release_turns()
            with self._close_lock:
                self._writer_done.set()
                late = self._close_finished  # a close gave up on this writer before it ended
            self._settled.set()
            self._wake_flushers(final=True)
            if late:  # that close left the sinks open, for they were in use: close them now
                self._close_sinks()

    def _writer_crashed(self, exc: BaseException) -> None:
        """The writer stops for good: every capture, flush and close from now on raises
        WriterStoppedError (none may hang on a queue nobody drains), and the crash is reported
        on stderr with its traceback, and logged, each as best it can."""
        try:
            error = repr(exc)
        except Exception:
            error = type(exc).__name__
        self._crash = error
        stranded = self._buffer.appended - self._processed
        stranded += self._buffer.abandon(self._stopped)
        log("error", "contexta_async.writer_crashed", error=error, lost=stranded)
        try:
            import traceback  # only now: the writer never stops otherwise

            print(
                f"contexta-async: the writer thread stopped; {stranded} captured line(s) "
                "will not be written:",
                file=sys.stderr,
            )
            traceback.print_exception(exc, file=sys.stderr)
        except Exception:  # stderr is gone too: the error is still raised to every caller
            pass

    def stopped_error(self) -> WriterStoppedError | None:
        """The error to raise if the writer has stopped, else None."""
        return None if self._crash is None else self._stopped()

    def _stopped(self, pending: int | None = None) -> WriterStoppedError:
        """The error for a writer that stopped; ``pending``: by default every line queued and
        never made durable."""
        assert self._crash is not None
        if pending is None:
            pending = self._buffer.appended - self._processed
        return WriterStoppedError(self._crash, max(pending, 0))

    def _deliver(self, batch: list[Item], last_seq: int) -> None:
        self._delivery.deliver(batch)
        self._counts["batches"] += 1
        if len(batch) > self._counts["largest_batch"]:
            self._counts["largest_batch"] = len(batch)
        with self._state_lock:
            self._processed = last_seq
        self._wake_flushers()

    # ---- flush -----------------------------------------------------------------------

    def _wake_flushers(self, *, final: bool = False) -> None:
        with self._state_lock:
            if final:
                ready, self._flush_waiters = self._flush_waiters, []
            else:
                done = self._processed
                ready = [w for w in self._flush_waiters if w[0] <= done]
                self._flush_waiters = [w for w in self._flush_waiters if w[0] > done]
        for _, waiter in ready:
            waiter.wake()

    def _register_flush(self, waiter: AsyncWaiter | ThreadWaiter) -> tuple[int, int, bool]:
        """Return (target, first unreported failure, must_wait)."""
        with self._state_lock:
            target = self._buffer.appended
            start = self._delivery.reported
            if self._processed >= target or self._writer_done.is_set() or self._gave_up:
                return target, start, False
            self._flush_waiters.append((target, waiter))
            return target, start, True

    def check_not_on_writer(self, call: str) -> None:
        """A flush or close waits for the writer: on the writer's own thread (a sink's write, a
        log hook its warnings reach) it would wait for itself forever."""
        if self._host is not None and threading.current_thread() is self._host:
            raise LifecycleError(
                f"{call}() was called on the writer thread (from a sink or a hook the writer "
                "runs): the writer cannot wait for itself; flush or close from another thread"
            )

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - one signature for both faces
        timeout = check_timeout(timeout)  # inf past what the platform can wait
        if not self._writer_started:
            return self._check_flush(self._buffer.appended, self._delivery.reported)
        self.check_not_on_writer("aflush")
        target, start, must_wait = self._register_flush(waiter := async_waiter())
        if must_wait:
            with anyio.move_on_after(timeout) as scope:
                await waiter.wait()
            if scope.cancelled_caught:
                raise FlushTimeoutError(max(target - self._processed, 0), timeout or 0.0)
        self._check_flush(target, start)

    def flush_blocking(self, timeout: float | None = None) -> None:
        timeout = check_timeout(timeout)  # inf past what the platform can wait
        if not self._writer_started:
            return self._check_flush(self._buffer.appended, self._delivery.reported)
        self.check_not_on_writer("flush")
        target, start, must_wait = self._register_flush(waiter := ThreadWaiter())
        if must_wait and not waiter.wait(_blocking_timeout(timeout)):
            raise FlushTimeoutError(max(target - self._processed, 0), timeout or 0.0)
        self._check_flush(target, start)

    def _check_flush(self, target: int, start: int) -> None:
        """Raise what went wrong with the lines up to ``target``: failures first (from index
        ``start`` on), then lines not handled in time."""
        with self._state_lock:
            processed = self._processed  # read first: these lines' failures are recorded by now
        self._delivery.raise_failures(start)
        if self._crash is not None and processed < target:
            raise self._stopped(target - processed)
        if processed < target:
            raise ShutdownTimeoutError(target - processed, self.options.shutdown_timeout)

    # ---- close -----------------------------------------------------------------------

    def _begin_close(self) -> bool:
        with self._state_lock:
            if self._closed:
                return False
            self._closed = True
        self._buffer.close()
        return True

    def _join_timeout(self, deadline: float | None) -> float | None:
        """Seconds a closer waits for the writer: until ``deadline`` (a ``time.monotonic()``
        value), by default ``shutdown_timeout`` from now; None is no limit."""
        if self._gave_up:
            return 0.0  # already waited for the writer in vain
        if deadline is None:
            return _blocking_timeout(self.options.shutdown_timeout)
        return _blocking_timeout(max(0.0, deadline - time.monotonic()))

    def close_blocking(self, deadline: float | None = None) -> None:
        """Drain, fsync and stop the writer; raise what could not be made durable.

        Every call returns once the close is over, or when its own time is up (``deadline``,
        by default ``shutdown_timeout`` from now): a second close, or one on another thread,
        waits for the close in progress and raises what it raises. Once a close is over, a
        call returns at once. A close interrupted while it waits (KeyboardInterrupt) is not
        over: the next one (the at-exit hook at the latest) waits for the drain again.
        """
        if self._close_finished:
            return
        self.check_not_on_writer("close")
        self._begin_close()
        if self._writer_started:
            # Not Thread.join: a join interrupted by KeyboardInterrupt marks a live thread
            # stopped (CPython 3.11), and every later join would return at once.
            self._settled.wait(self._join_timeout(deadline))
        self._finish_close()

    async def aclose(self, deadline: float | None = None) -> None:
        """Async close: the same guarantees, without blocking the event loop."""
        if self._close_finished:
            return
        self.check_not_on_writer("aclose")
        self._begin_close()
        if self._writer_started:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    self._settled.wait, self._join_timeout(deadline), abandon_on_cancel=True
                )
        self._finish_close()

    def _finish_close(self) -> None:
        """After the writer was given its time to drain: the first caller decides the outcome
        and releases the sinks; every caller raises that outcome."""
        timed_out = False
        with self._close_lock:
            if not self._close_finished:
                self._close_outcome = self._outcome_now()
                self._close_finished = True
                _open_pipelines.discard(self)
                if self._writer_done.is_set() or not self._writer_started:
                    self._close_sinks()  # never under a writer still in a sink: it closes them
                else:
                    timed_out = True
            outcome = self._close_outcome
        if timed_out:
            self._let_waiters_go()
        self._settled.set()  # other closers stop waiting: this close is over
        if outcome is not None:
            raise _again(outcome)

    def _outcome_now(self) -> ContextaError | None:
        """What the close reports: lines the writer has not handled, else delivery failures."""
        try:
            if self._writer_started and not self._writer_done.is_set():
                pending = self._buffer.appended - self._processed + self._buffer.parked
                raise ShutdownTimeoutError(pending, self.options.shutdown_timeout)
            self._check_flush(self._buffer.appended, self._delivery.reported)
        except ContextaError as exc:
            return exc
        return None

    # ---- exit ------------------------------------------------------------------------

    def check_stuck_at_exit(self, now: float) -> None:
        """(The exit watch, during interpreter exit.) Give up on the writer once it has handled
        no line for ``shutdown_timeout`` while threads wait on it."""
        waiting = self._buffer.parked or self._buffer.turns_pending or self._flush_waiters
        progress = self._processed
        if not waiting or progress != self._exit_progress:
            self._exit_progress, self._exit_since = progress, now
        elif now - self._exit_since >= self.options.shutdown_timeout and not self._gave_up:
            self.give_up_at_exit()

    def give_up_at_exit(self) -> None:
        """Close, and let every thread waiting on the stuck writer go, so that exit can go on."""
        self._begin_close()
        self._let_waiters_go()
        log(
            "error",
            "contexta_async.writer_stuck_at_exit",
            seconds=self.options.shutdown_timeout,
            pending=self._buffer.appended - self._processed,
        )

    def _let_waiters_go(self) -> None:
        """The writer is given up (a close timed out, or the exit watch): nobody may wait for it.

        Lines parked for room join the queue past the bound and their captures return: they
        count among the lines the close reports as not durable (the writer still writes them
        should it recover). A capture after that raises ClosedScopeError (the queue is closed);
        a flush waiting, or called later, raises ShutdownTimeoutError.
        """
        with self._state_lock:
            self._gave_up = True
        self._buffer.queue_all_parked()
        self._buffer.release_turns()
        self._wake_flushers(final=True)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log("error", "contexta_async.sink_close_failed", sink=sink.name, error=str(exc))

    # ---- fork ------------------------------------------------------------------------

    def reinit_after_fork(self) -> None:
        """In a forked child: start afresh, as OpenTelemetry's batch processors do.

        The writer thread was not copied, any lock may have been held by another thread at the
        fork, and the queued lines, waiters and failures are the parent's (its writer writes
        and reports them). The child keeps its options, sinks and closed state; its next
        capture starts a writer of its own, and its flushes cover its own lines only.
        """
        self._start_afresh()
        _open_pipelines.discard(self)
        for sink in self.sinks:
            try:
                sink.reinit_after_fork()
            except Exception as exc:  # the child must go on; its writes will report failures
                log("error", "contexta_async.sink_fork_failed", sink=sink.name, error=repr(exc))

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> Statistics:
        counts = self._counts + self._delivery.counts
        return Statistics(
            queued=len(self._buffer),
            waiting_producers=self._buffer.parked,
            enqueued=self._buffer.appended,
            written=counts["written"],
            fsyncs=counts["fsyncs"],
            batches=counts["batches"],
            largest_batch=counts["largest_batch"],
            peak_queued=self._buffer.peak,
            failed=counts["failed"],
            dropped=counts["dropped"],
            retries=counts["retries"],
        )
