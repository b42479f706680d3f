"""The scheduler: one background worker owns the model and batches the requests that queue up.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

Runtimes and backends are not thread-safe, so exactly one thread (the worker) ever touches the
:class:`~flavorkit.runtime.loaded.LoadedModel`: it encodes prompts, runs ``generate`` and executes
exclusive jobs (the MLflow ``/invocations`` route). Request handlers on the event loop only
submit :class:`Ticket` objects and read their events: the worker puts each event straight into
the asyncio queue of the HTTP request (``loop.call_soon_threadsafe``), one queue shared by the
request's tickets, so no task relays them.

Batching is request-level for every backend: while a batch runs, new requests wait in a bounded
queue; the next ``generate`` call takes all of them together (up to ``max_batch``). Each request
keeps its own settings; :meth:`LoadedModel.run_batch` routes the per-choice events back.
A full queue is refused at once (:class:`QueueFull`); memory never grows without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from flavorkit.backend.hookspec import hookimpl
from flavorkit.errors import InvalidRequest, JobCancelled
from flavorkit.runtime.continuous import ContinuousBatch
from flavorkit.runtime.loaded import BatchEvent, LoadedModel, PreparedRequest
from flavorkit.serve.metrics import Metrics
from flavorkit.settings import ServeSettings
from flavorkit.types import close_stream

__all__ = [
    "ClientDisconnected",
    "Event",
    "EventQueue",
    "JobCancelled",
    "QueueFull",
    "Scheduler",
    "ShuttingDown",
    "Ticket",
]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already; the caller answers 429."""


class ClientDisconnected(Exception):
    """The client went away; its ticket was cancelled."""


class ShuttingDown(Exception):
    """The server is draining and takes no new work; the caller answers 503."""


class _JobGuard:
    """Backend middleware that makes exclusive jobs (``/invocations``) cancellable and counted.

    A job calls MLflow's ``predict``, which reaches the backend through the core's own loop; this
    ``generate`` wrapper (registered on the backend's plugin manager, the designed place for
    cross-cutting plugins) sees every delta of the job: it counts the tokens and, once the job's
    ticket is cancelled, marks the batch's requests cancelled and stops the call.
    """

    def __init__(self, metrics: Metrics, handle: Any) -> None:
        self.metrics = metrics
        self.handle = handle  # the backend plugin manager is shared by every model of that backend
        self.current: Ticket | None = None  # set by the worker while a job runs
        self.worker: int | None = None  # the worker thread's ident

    @hookimpl(wrapper=True)
    def generate(self, handle: Any, requests: Sequence[Any]) -> Any:
        """Wrap the backend's stream while this scheduler's job runs, on its worker, for its model."""
        stream = yield
        ticket = self.current
        if ticket is None or handle is not self.handle or threading.get_ident() != self.worker:
            return stream
        return self._watch(stream, requests, ticket)

    def _watch(self, stream: Any, requests: Sequence[Any], ticket: Ticket) -> Iterator[Any]:
        try:
            for delta in stream:
                if ticket.cancel_reason is not None:
                    for request in requests:
                        request.cancelled = True
                    raise JobCancelled(f"the request was cancelled ({ticket.cancel_reason})")
                self.metrics.completion_tokens.inc(delta.tokens)
                yield delta
        finally:
            close_stream(stream)


@dataclass(frozen=True, slots=True)
class Event:
    """What the worker tells a ticket's reader.

    ``kind`` is ``"start"`` (the request was validated and joined a batch; payload: the
    :class:`PreparedRequest`), ``"delta"`` (a :class:`BatchEvent`, streaming tickets only),
    ``"done"`` (every choice finished; payload: the PreparedRequest), ``"result"`` (a job's return
    value) or ``"error"`` (an exception). ``ticket`` is the :attr:`Ticket.index` of the ticket it
    belongs to, which tells apart the tickets of one request sharing a queue (``-1``: none, the
    connection itself).
    """

    kind: str
    payload: Any = None
    ticket: int = 0


#: The queue a request's events arrive on (one per HTTP request, shared by its tickets).
EventQueue = asyncio.Queue[Event]


@dataclass(eq=False)
class Ticket:
    """One unit of queued work, and the asyncio queue its events arrive on (its own, or its request's)."""

    raw: Any
    job: Callable[[], Any] | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    scheduler: Scheduler
    route: str = ""
    events: EventQueue = field(default_factory=asyncio.Queue)
    index: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    prepared: PreparedRequest | None = None
    cancel_reason: str | None = None
    done: bool = False
    first_token: float | None = None
    last_token: dict[int, float] = field(default_factory=dict)
    #: ``/v1/completions``' ``logprobs`` (see :meth:`LoadedModel.prepare_request`).
    text_logprobs: int | None = None

    def push(self, kind: str, payload: Any = None) -> None:
        """Put an event into the reader's queue (called from the worker thread), marked with this ticket's index."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, Event(kind, payload, self.index))

    def cancel(self, reason: str) -> None:
        """Stop this request (any thread): leave the queue, or make the backend drop it within a step."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self.scheduler._cancelled(self, reason)
        prepared = self.prepared
        if prepared is not None:
            prepared.cancel()


class Scheduler:
    """A bounded queue in front of one worker thread that owns the model.

    It takes the checked :class:`~flavorkit.settings.ServeSettings` (``max_batch``, ``max_queue``,
    ``batch_wait``, ``join_wait``, ``batching``); ``values`` change some of them (checked too).
    """

    def __init__(
        self, model: LoadedModel, metrics: Metrics, settings: ServeSettings | None = None, **values: Any
    ) -> None:
        settings = ServeSettings.of(settings, **values)
        self.model = model
        self.metrics = metrics
        self.max_batch = settings.max_batch
        self.max_queue = settings.max_queue
        self.batch_wait = settings.batch_wait
        self.join_wait = settings.join_wait
        # None: decided on the worker when the first request runs (does the backend have a session?)
        self._continuous: bool | None = None if settings.batching == "continuous" else False
        self._freed = 0  # requests finished since the last admission
        self._last_batch = 1
        self._queue: collections.deque[Ticket] = collections.deque()
        self._cond = threading.Condition()
        self._running: list[Ticket] = []
        self._accepting = True
        self._stop = False
        self._guard = _JobGuard(metrics, model.handle)
        self._pm = getattr(model.backend, "pm", None)
        if self._pm is not None:
            self._pm.register(self._guard, name=f"flavorkit-serve-job-guard-{id(self)}")
        self._thread = threading.Thread(target=self._work, name="flavorkit-serve-worker", daemon=True)
        self._thread.start()
        self._guard.worker = self._thread.ident

    # -- called on the event loop -------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False once draining began."""
        return self._accepting

    def submit(self, raw: Any, *, stream: bool, route: str = "", events: EventQueue | None = None) -> Ticket:
        """Queue one generation request; raise :class:`QueueFull` or :class:`ShuttingDown`.

        Its events arrive on ``events`` (its own new queue by default).
        """
        return self._enqueue(self._ticket(raw, None, stream, route, events))

    def submit_many(
        self,
        raws: Sequence[Any],
        *,
        stream: bool,
        route: str = "",
        events: EventQueue | None = None,
        text_logprobs: int | None = None,
    ) -> list[Ticket]:
        """Queue several requests at once (a list prompt): all of them, or none when they do not fit.

        They enter the queue together, so the worker admits them together (up to ``max_batch``).
        Their events share one queue (``events``, or a new one), each marked with its ticket's
        position in ``raws``.
        """
        queue: EventQueue = asyncio.Queue() if events is None else events
        tickets = [self._ticket(raw, None, stream, route, queue, i) for i, raw in enumerate(raws)]
        for ticket in tickets:
            ticket.text_logprobs = text_logprobs
        with self._cond:
            if not self._accepting:
                raise ShuttingDown
            if len(self._queue) + len(tickets) > self.max_queue:
                raise QueueFull
            self._queue.extend(tickets)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return tickets

    def submit_job(self, job: Callable[[], Any], *, route: str = "", events: EventQueue | None = None) -> Ticket:
        """Queue a callable that runs alone on the worker (it may use the model); its result comes back."""
        return self._enqueue(self._ticket(None, job, False, route, events))

    def _ticket(
        self,
        raw: Any,
        job: Callable[[], Any] | None,
        stream: bool,
        route: str,
        events: EventQueue | None,
        index: int = 0,
    ) -> Ticket:
        loop = asyncio.get_running_loop()
        queue: EventQueue = asyncio.Queue() if events is None else events
        return Ticket(raw, job, stream, loop, self, route, events=queue, index=index)

    def _enqueue(self, ticket: Ticket) -> Ticket:
        with self._cond:
            if not self._accepting:
                raise ShuttingDown
            if len(self._queue) >= self.max_queue:
                raise QueueFull
            self._queue.append(ticket)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return ticket

    def _cancelled(self, ticket: Ticket, reason: str) -> None:
        with self._cond:
            with contextlib.suppress(ValueError):
                self._queue.remove(ticket)
            self.metrics.queue_depth.set(len(self._queue))
        if not ticket.done:
            self.metrics.cancelled.labels(reason=reason).inc()

    # -- shutdown -----------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Refuse new work from now on (draining)."""
        with self._cond:
            self._accepting = False

    def shutdown(self, deadline: float) -> bool:
        """Drain, then stop the worker; True when everything finished in time.

        New work is refused; queued and running requests get ``deadline`` seconds to finish, then
        what is left is cancelled.
        """
        self.stop_accepting()
        end = time.monotonic() + deadline
        with self._cond:
            while (self._queue or self._running) and time.monotonic() < end:
                self._cond.wait(timeout=min(0.05, max(0.0, end - time.monotonic())))
            clean = not self._queue and not self._running
            left = [*self._queue, *self._running]
            self._stop = True
            self._cond.notify_all()
        for ticket in left:
            ticket.cancel("shutdown")
            ticket.push("error", ShuttingDown())
        self._thread.join(timeout=max(1.0, end - time.monotonic()))
        if self._pm is not None and self._pm.is_registered(self._guard):
            self._pm.unregister(self._guard)  # the manager outlives this server (backends are cached)
        return clean

    # -- the worker ---------------------------------------------------------------------------------

    def _take(self) -> list[Ticket] | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            head = self._queue.popleft()
            batch = [head]
            if head.job is None:
                self._fill(batch)
                # Clients of the last batch got their answers together and are about to send their next
                # requests together: wait briefly for them, or the first to arrive would run alone.
                target = min(self.max_batch, self._last_batch)
                end = time.monotonic() + self.batch_wait
                while len(batch) < target and not self._stop and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
                    self._fill(batch)
                self._last_batch = len(batch)
            self._running = batch
            self.metrics.queue_depth.set(len(self._queue))
            return batch

    def _fill(self, batch: list[Ticket]) -> None:
        """Move queued generation tickets into ``batch``, up to ``max_batch`` (a job waits its turn)."""
        while self._queue and len(batch) < self.max_batch and self._queue[0].job is None:
            batch.append(self._queue.popleft())

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if batch[0].job is not None:
                    self._run_job(batch[0])
                elif self._continuous is not False:
                    self._run_continuous(batch)
                else:
                    self._run_batch(batch)
            except BaseException:  # pragma: no cover - _run_* report their own errors
                log.exception("scheduler worker failed")
            finally:
                with self._cond:
                    self._running = []
                    self._cond.notify_all()

    def _run_job(self, ticket: Ticket) -> None:
        assert ticket.job is not None
        self._guard.current = ticket
        try:
            result = ticket.job()
        except BaseException as exc:
            ticket.done = True
            ticket.push("error", exc)
        else:
            ticket.done = True
            ticket.push("result", result)
        finally:
            self._guard.current = None

    def _prepare(self, batch: Sequence[Ticket]) -> list[Ticket]:
        """Validate and encode each ticket's request; the ones that fail get their error, the rest ``start``."""
        admitted: list[Ticket] = []
        for ticket in batch:
            try:
                p = self.model.prepare_request(ticket.raw, text_logprobs=ticket.text_logprobs)
            except InvalidRequest as exc:
                ticket.done = True
                ticket.push("error", exc)
                continue
            except Exception as exc:
                log.exception("preparing a request failed")
                ticket.done = True
                ticket.push("error", exc)
                continue
            ticket.prepared = p
            if ticket.cancel_reason is not None:  # cancelled while it waited
                p.cancel()
                continue
            admitted.append(ticket)
            self.metrics.prompt_tokens.inc(p.prompt_tokens)
            ticket.push("start", p)
        self.metrics.active.inc(len(admitted))
        return admitted

    def _deliver(self, ticket: Ticket, ev: BatchEvent, finish: bool = True) -> None:
        """Hand one generation event to its ticket (metrics first); finish the ticket with its last choice.

        ``finish=False`` leaves finishing to the caller: a continuous batch's step advances every
        choice before its events are delivered, so a request may already count as finished while
        events of its other choices are still to come.
        """
        now = time.perf_counter()
        if ticket.first_token is None:  # the time to first token is observed where the answer is written (routes)
            ticket.first_token = now
        key = ev.choice
        last = ticket.last_token.get(key)
        if last is not None and ev.tokens:
            self.metrics.itl.observe((now - last) / ev.tokens)
        ticket.last_token[key] = now
        self.metrics.completion_tokens.inc(ev.tokens)
        if ticket.stream:
            ticket.push("delta", ev)
        prepared = ticket.prepared
        if finish and ev.finish_reason is not None and prepared is not None and prepared.finished and not ticket.done:
            self._finish(ticket, "done", prepared)

    def _run_batch(self, batch: list[Ticket]) -> None:
        """Request-level batching: every admitted ticket shares one ``run_batch`` (one ``generate`` call)."""
        tickets = self._prepare(batch)
        if not tickets:
            return
        self.metrics.batch_size.observe(len(tickets))
        prepared = [t.prepared for t in tickets if t.prepared is not None]
        try:
            for ev in self.model.run_batch(prepared):
                self._deliver(tickets[ev.request], ev)
        except Exception as exc:
            log.exception("generation failed for a batch of %d request(s)", len(tickets))
            for ticket in tickets:
                if not ticket.done:
                    self._finish(ticket, "error", exc)
        finally:
            for ticket in tickets:
                if not ticket.done:  # cancelled ones end here
                    self._finish(ticket, "done", ticket.prepared)

    def _run_continuous(self, batch: list[Ticket]) -> None:
        """Continuous batching: decode step by step, admitting queued requests between steps.

        Runs until nothing is running or queued (or a job is next in line), then closes the backend
        session; the next busy period opens a new one.
        """
        try:
            session = self.model.open_session()
        except Exception:
            log.exception("the backend could not open a generation session; falling back to request-level batching")
            session = None
        if session is None:  # the backend cannot take requests mid-batch: request-level batching
            self._continuous = False
            self._run_batch(batch)
            return
        self._continuous = True
        running: dict[int, Ticket] = {}
        try:
            self._admit(session, batch, running)
            while running:
                for ev in session.step():
                    self._deliver(running[ev.request], ev, finish=False)
                ended = [key for key, t in running.items() if t.done or (t.prepared and t.prepared.finished)]
                for key in ended:
                    ticket = running.pop(key)
                    if not ticket.done:  # cancelled: it ends without another event from the backend
                        self._finish(ticket, "done", ticket.prepared)
                    self._freed += 1
                if ended:
                    with self._cond:
                        self._running = list(running.values())
                if self._stop:
                    break
                joining = self._join(len(running))
                if joining:
                    self._admit(session, joining, running)
            self._last_batch = max(1, self._freed)
        except Exception as exc:
            log.exception("generation failed with %d request(s) running", len(running))
            for ticket in running.values():
                if not ticket.done:
                    self._finish(ticket, "error", exc)
        finally:
            for ticket in running.values():
                if not ticket.done:  # shutdown: cancelled
                    self._finish(ticket, "done", ticket.prepared)
            try:
                session.close()
            except Exception:
                log.exception("closing the generation session failed")

    def _admit(self, session: ContinuousBatch, batch: Sequence[Ticket], running: dict[int, Ticket]) -> None:
        """Prepare ``batch`` and add what is valid to the session; it starts at the next step."""
        tickets = self._prepare(batch)
        self._freed = 0
        if not tickets:
            return
        self.metrics.batch_size.observe(len(tickets))
        try:
            keys = session.add([t.prepared for t in tickets if t.prepared is not None])
        except Exception as exc:
            for ticket in tickets:
                self._finish(ticket, "error", exc)
            raise
        running.update(zip(keys, tickets, strict=True))
        with self._cond:
            self._running = list(running.values())

    def _join(self, running: int) -> list[Ticket]:
        """Queued requests that join the running session now (called between steps).

        Requests that arrive while others decode join at the next step, except after rows finished
        since the last admission: their clients are likely coming back, so newcomers are held for up
        to ``join_wait`` seconds until as many are waiting as rows finished (or the batch is full),
        and join as one group instead of one by one in many small backend batches. A request with
        no such reason to wait does not: issue 21 measured a late arrival behind 4 streams at
        2.8x its idle time to first token with the wait, 1.1x without. A job at the head of the
        queue waits for the session to drain.
        """
        with self._cond:
            if not self._queue or self._queue[0].job is not None or self._stop:
                return []
            room = self.max_batch - running
            if room <= 0:
                return []
            waited = time.perf_counter() - self._queue[0].submitted
            ready = 0  # generation tickets before the next job, as many as would join
            for ticket in itertools.islice(self._queue, room):
                if ticket.job is not None:
                    break
                ready += 1
            target = min(self._freed, room)  # 0 when no row finished: nobody to wait for
            if waited < self.join_wait and ready < target:
                return []
            joining: list[Ticket] = []
            while self._queue and len(joining) < room and self._queue[0].job is None:
                joining.append(self._queue.popleft())
            self._running.extend(joining)  # shutdown must see them before they are admitted
            self.metrics.queue_depth.set(len(self._queue))
            return joining

    def _finish(self, ticket: Ticket, kind: str, payload: Any) -> None:
        """The ticket's last event; the metrics are updated before the reader can see it."""
        ticket.done = True
        self.metrics.active.dec()
        ticket.push(kind, payload)
