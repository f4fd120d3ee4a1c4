"""Sending the results of many jobs to QueueService together: one ReportResults every few ms.

Each job hands its result (a completion, a failure or a hand-back) to the `Reporter` and waits
for its own answer. One background task sends whatever is waiting as one ReportResults call
when the oldest result has waited `interval`, or at once when `batch` results are waiting or
the worker has no job left running (no result is coming to join them), whichever comes
first; at most one call is in flight, so the results that arrive meanwhile make up the next
call. QueueService answers each result on its own (`ack_only`: the job's id, a
code and the job's new status), and each job learns its own fate:

- OK: recorded; the ack's status says whether a failure will be retried;
- FAILED_PRECONDITION or NOT_FOUND: the lease is gone, and the job is no longer this worker's;
- a transport failure of the whole call (QueueService restarting): the same results are sent
  again, with backoff, for as long as each one's lease lasts. A retry that finds a lease gone
  may follow a first try that was in fact recorded (only its answer was lost): either way the
  job is no longer this worker's, as with a single retried CompleteJob.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import re
from collections import deque
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace

from clients.errors import ClientError
from clients.queue import JobResult, JobResultAck, JobStatus, QueueClient
from clients.worker.tracing import settle_span

log = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK.value[0]
_LEASE_GONE = {grpc.StatusCode.FAILED_PRECONDITION.value[0], grpc.StatusCode.NOT_FOUND.value[0]}
_NO_SPAN = trace.INVALID_SPAN.get_span_context()
# A ReportResults call's deadline when every lease of its results lasts longer than this.
_CALL_TIMEOUT = 10.0


class Fate(enum.Enum):
    """What QueueService made of one result."""

    RECORDED = "recorded"
    LEASE_LOST = "lease lost"
    UNRECORDED = "unrecorded"  # refused for another reason, or QueueService out of reach


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one result: its fate, the job's status after it, and why if refused."""

    fate: Fate
    status: int = JobStatus.Value("JOB_STATUS_UNSPECIFIED")
    message: str = ""

    @property
    def recorded(self) -> bool:
        return self.fate is Fate.RECORDED


@dataclass(slots=True)
class _Waiting:
    job_id: str
    what: str
    item: JobResult
    give_up_at: float
    queued_at: float
    answer: asyncio.Future[Answer]
    # The job's span, which the call's span links to.
    span: trace.SpanContext
    tries: int = field(default=0)


class Reporter:
    """Batches the results of a worker's jobs into ReportResults calls (see the module doc)."""

    def __init__(
        self, queue: QueueClient, *, interval: float, batch: int, tracing: bool = True
    ) -> None:
        self._queue = queue
        self._tracing = tracing
        self._interval = interval
        self._batch = batch
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._prompt = False
        # Set when the worker has no job left running: no result is coming to join a batch.
        self._nothing_running = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        # Pause before the next call after a transport failure; 0 while calls succeed.
        self._retry_delay = 0.0
        #: ReportResults calls made, answered or not (for logs and tests).
        self.calls = 0

    @property
    def backlog(self) -> int:
        """Results waiting to be sent or answered."""
        return len(self._waiting) + self._in_flight

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-reporter")

    def submit(
        self, job_id: str, what: str, item: JobResult, give_up_at: float
    ) -> asyncio.Future[Answer]:
        """Queues one job's result; the future is its answer. `give_up_at` (loop time) is when
        the result is no longer worth sending: the job's lease is over by then."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        span = trace.get_current_span().get_span_context() if self._tracing else _NO_SPAN
        self._waiting.append(_Waiting(job_id, what, item, give_up_at, loop.time(), answer, span))
        self._arrived.set()
        if len(self._waiting) >= self._batch:
            self._full.set()
        return answer

    def nothing_running(self) -> None:
        """The worker's last running job has handed in its result: none is coming soon to join
        those waiting, so they go out now instead of at the end of the interval. A drain of
        short jobs would otherwise wait the whole interval after every batch."""
        self._nothing_running = True
        self._full.set()

    def hurry(self) -> None:
        """From now on sends results as they come, without waiting for others to join them:
        the worker is stopping, and a result held back would only delay its exit."""
        self._prompt = True
        self._full.set()

    async def close(self) -> None:
        """Sends what is waiting at once (retrying while leases last) and stops."""
        self.hurry()
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            due = self._waiting[0].queued_at + self._interval
            wait = not self._prompt and not self._nothing_running
            if wait and len(self._waiting) < self._batch and loop.time() < due:
                # Let more results join this call, but never keep the first waiting longer.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), due - loop.time())
                continue
            # Cleared before the call: jobs that all end while it is out are sent right after.
            self._nothing_running = False
            await self._send()
            if self._retry_delay:
                await asyncio.sleep(self._retry_delay * random.uniform(0.8, 1.2))

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        sending: list[_Waiting] = []
        while self._waiting and len(sending) < self._batch:
            waiting = self._waiting.popleft()
            if waiting.answer.done():
                continue
            if now >= waiting.give_up_at:
                log.error(
                    "job %s: %s could not be recorded before its lease ran out",
                    waiting.job_id,
                    waiting.what,
                )
                self._settle(waiting, Answer(Fate.UNRECORDED, message="lease ran out"))
                continue
            waiting.tries += 1
            sending.append(waiting)
        if not sending:
            return
        timeout = min(_CALL_TIMEOUT, max(0.1, min(w.give_up_at for w in sending) - now))
        self.calls += 1
        self._in_flight = len(sending)
        try:
            with settle_span((w.span for w in sending), recording=self._tracing):
                acks = await self._queue.report_results(
                    [w.item for w in sending], ack_only=True, timeout=timeout
                )
        except Exception as exc:
            self._in_flight = 0
            if not isinstance(exc, ClientError):
                # A bug, not QueueService: answer the jobs rather than leave them waiting.
                log.exception("ReportResults of %d result(s) failed", len(sending))
                for waiting in sending:
                    self._settle(waiting, Answer(Fate.UNRECORDED, message=repr(exc)))
                return
            refused = _refused_items(exc, len(sending))
            if refused:
                # One bad result refuses the whole call: drop it, send the others again.
                for index, waiting in enumerate(sending):
                    if index in refused:
                        log.error(
                            "job %s: %s refused: %s", waiting.job_id, waiting.what, refused[index]
                        )
                        self._settle(waiting, Answer(Fate.UNRECORDED, message=refused[index]))
                self._waiting.extendleft(
                    reversed([w for i, w in enumerate(sending) if i not in refused])
                )
                return
            if not exc.retryable:
                log.error("%d result(s) could not be recorded: %s", len(sending), exc)
                for waiting in sending:
                    self._settle(waiting, Answer(Fate.UNRECORDED, message=exc.message))
                return
            # Back to the front, in order: the next call sends them again (with what came in
            # meanwhile), after a pause that grows while QueueService stays out of reach.
            self._waiting.extendleft(reversed(sending))
            self._retry_delay = min(max(self._retry_delay * 2, 0.2), 2.0)
            log.warning(
                "ReportResults failed (%s); %d result(s) sent again in %.1f s",
                exc,
                len(sending),
                self._retry_delay,
            )
            return
        self._in_flight = 0
        self._retry_delay = 0.0
        if len(acks) != len(sending):
            message = f"QueueService answered {len(acks)} of {len(sending)} results"
            log.error("ReportResults: %s", message)
            for waiting in sending:
                self._settle(waiting, Answer(Fate.UNRECORDED, message=message))
            return
        for waiting, ack in zip(sending, acks, strict=True):
            self._settle(waiting, self._answer(waiting, ack))

    @staticmethod
    def _answer(waiting: _Waiting, ack: JobResultAck) -> Answer:
        if ack.code == _OK:
            return Answer(Fate.RECORDED, status=ack.status)
        if ack.code in _LEASE_GONE:
            note = " (an earlier try may have been recorded)" if waiting.tries > 1 else ""
            return Answer(Fate.LEASE_LOST, message=f"{waiting.what}: {ack.message}{note}")
        code = grpc.StatusCode.UNKNOWN
        for candidate in grpc.StatusCode:
            if candidate.value[0] == ack.code:
                code = candidate
        log.error("job %s: %s refused: %s %s", waiting.job_id, waiting.what, code.name, ack.message)
        return Answer(Fate.UNRECORDED, message=f"{code.name}: {ack.message}")

    @staticmethod
    def _settle(waiting: _Waiting, answer: Answer) -> None:
        if not waiting.answer.done():
            waiting.answer.set_result(answer)


_ITEM = re.compile(r"^results\[(\d+)\]")


def _refused_items(error: ClientError, count: int) -> dict[int, str]:
    """The results an INVALID_ARGUMENT names (`results[3].fail.error`), by index, with why."""
    if error.code is not grpc.StatusCode.INVALID_ARGUMENT:
        return {}
    refused: dict[int, str] = {}
    for violation in error.violations:
        match = _ITEM.match(violation.field)
        if match and int(match.group(1)) < count:
            refused[int(match.group(1))] = f"{violation.field}: {violation.description}"
    return refused
