"""``FairQueue``: the bounded, per-account fair waiting room in front of the local batcher.

Why: without it every request joins one FIFO in front of a batch of ``max_batch`` rows,
so 200 streams from a flood put every later request, whoever sends it, behind all of
them (a 4-token request waited 87 s). The queue fixes three things:

- **Bounded.** At most ``capacity`` requests wait, and at most ``per_account`` of one
  account. A request beyond its account's share is refused at once with 429; a request
  arriving to a full queue is refused with 503, unless it outranks a waiting one (below),
  which is then shed instead. Both carry a ``retry_after`` estimate. Refusing at once,
  before any prefill, is what keeps a flood from costing more than a dictionary lookup.
- **Fair.** When rows free up, the next request is the one whose account has the
  fewest rows running (counting those joining in the same round), ties broken by rank
  and then by arrival. An account with nothing running therefore goes ahead of one that
  already holds rows, whatever their arrival order; within an account, first come first
  served.
- **Ranked.** ``GenerationRequest.priority`` (set by the gateway: higher for established
  accounts) decides who is shed when the queue is full (the lowest rank, newest first,
  from the account with the most waiting) and breaks ties for free rows. ``reserved``
  rows of the batch are kept for ranked requests: without them an established account's
  request arriving while a flood holds every row waits until some row finishes (a whole
  ``max_tokens`` when the flood's rows started together: 7 s on a loaded CPU).

Threads: ``offer`` runs on the event loop, ``take`` and ``wait`` in the worker thread;
one lock guards the lot, and no call blocks while holding it for more than a few dict
operations.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

from distillguard.backends.base import BackendError, GenerationRequest


class Waiting(Protocol):
    """What the queue needs from a job."""

    request: GenerationRequest

    @property
    def closed(self) -> bool:
        """True once nobody waits for the job any more."""

    def fail(self, error: BackendError) -> None:
        """End the job with ``error``."""


def _account(request: GenerationRequest) -> str:
    return request.account or ""


class FairQueue:
    """Waiting jobs by account; see the module docstring for the policy.

    ``service_seconds`` (a callable) gives the current estimate of one request's time in
    the batch, for ``Retry-After``; ``rows`` is the batch size it is shared by.
    """

    def __init__(self, capacity: int, per_account: int, *, rows: int, reserved: int = 0,
                 service_seconds: Callable[[], float] = lambda: 1.0) -> None:
        if capacity < 1 or per_account < 1:
            raise ValueError("capacity and per_account must be at least 1")
        self.capacity = capacity
        self.per_account = per_account
        self.rows = max(1, rows)
        self.reserved = max(0, min(reserved, self.rows - 1))
        self.service_seconds = service_seconds
        self._by_account: dict[str, deque[tuple[int, Waiting]]] = {}
        self._size = 0
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.shed_full = 0  # refused or evicted because the queue was full (503)
        self.shed_account = 0  # refused because the account had its share waiting (429)

    def __len__(self) -> int:
        return self._size

    def retry_after(self) -> float:
        """Seconds until the queue has room again, roughly: its length in batches."""
        batches = (self._size + 1) / self.rows
        return min(60.0, max(1.0, math.ceil(batches * self.service_seconds())))

    # -- the event loop's side --------------------------------------------------------

    def offer(self, job: Waiting) -> None:
        """Queue ``job`` or raise BackendError (429 / 503 with ``retry_after``)."""
        request = job.request
        account = _account(request)
        victim: Waiting | None = None
        with self._cond:
            if self._closed:
                raise BackendError("the local backend is not running", status=503,
                                   code="backend_unavailable")
            mine = self._by_account.get(account)
            if mine is not None:
                mine = self._prune(account, mine)
            if mine is not None and len(mine) >= self.per_account:
                self.shed_account += 1
                retry = self.retry_after()
                raise BackendError(
                    f"This account already has {len(mine)} requests waiting for the model, "
                    f"its share under the current load. Try again in {retry:.0f} s.",
                    status=429, code="too_many_waiting", retry_after=retry)
            if self._size >= self.capacity:
                victim = self._evict_below(request.priority)
                if victim is None:
                    self.shed_full += 1
                    retry = self.retry_after()
                    raise BackendError(
                        f"The model is at capacity ({self._size} requests waiting). "
                        f"Try again in {retry:.0f} s.", status=503, code="overloaded",
                        retry_after=retry)
                self.shed_full += 1
            self._by_account.setdefault(account, deque()).append((next(self._seq), job))
            self._size += 1
            self._cond.notify()
        if victim is not None:
            retry = self.retry_after()
            victim.fail(BackendError(
                "The model is at capacity and this request was shed in favour of "
                f"established accounts. Try again in {retry:.0f} s.", status=503,
                code="overloaded", retry_after=retry))

    def _evict_below(self, priority: int) -> Waiting | None:
        """Remove and return the newest job of the lowest rank below ``priority`` (from
        the account with most waiting), or None when every waiting job ranks as high."""
        best: tuple[int, int, int] | None = None
        best_account = ""
        for account, jobs in self._by_account.items():
            if not jobs:
                continue
            seq, job = jobs[-1]
            rank = job.request.priority
            if rank >= priority:
                continue
            key = (rank, -len(jobs), -seq)
            if best is None or key < best:
                best, best_account = key, account
        if best is None:
            return None
        _, job = self._by_account[best_account].pop()
        self._size -= 1
        if not self._by_account[best_account]:
            del self._by_account[best_account]
        return job

    def _prune(self, account: str, jobs: deque[tuple[int, Waiting]]
               ) -> deque[tuple[int, Waiting]] | None:
        """``jobs`` without those whose client left (they would hold a share for
        nothing); None when none is left."""
        kept = deque(item for item in jobs if not item[1].closed)
        if len(kept) == len(jobs):
            return jobs
        self._size -= len(jobs) - len(kept)
        if kept:
            self._by_account[account] = kept
            return kept
        del self._by_account[account]
        return None

    # -- the worker's side ------------------------------------------------------------

    def wait(self) -> bool:
        """Block until a job waits or the queue closes; False once closed."""
        with self._cond:
            while not self._size and not self._closed:
                self._cond.wait()
            return not self._closed

    def take(self, free: int, running: Mapping[str, int], *, busy: bool,
             limit: int = 0) -> list[Waiting]:
        """The waiting jobs that join the batch now (``free`` rows, ``running`` rows per
        account), at most ``limit`` of them (0: no limit). ``busy``: the batch has rows;
        if not, one job wider than the whole batch still runs, alone."""
        taken: list[Waiting] = []
        holding = dict(running)
        with self._cond:
            while self._size and (limit <= 0 or len(taken) < limit):
                best: tuple[int, int, int] | None = None
                best_account = ""
                for account, jobs in list(self._by_account.items()):
                    while jobs and jobs[0][1].closed:
                        jobs.popleft()
                        self._size -= 1
                    if not jobs:
                        del self._by_account[account]
                        continue
                    seq, job = jobs[0]
                    key = (holding.get(account, 0), -job.request.priority, seq)
                    if best is None or key < best:
                        best, best_account = key, account
                if best is None:
                    break
                job = self._by_account[best_account][0][1]
                width = job.request.n
                room = free if job.request.priority > 0 else free - self.reserved
                if width > room and (busy or taken):
                    break
                self._by_account[best_account].popleft()
                if not self._by_account[best_account]:
                    del self._by_account[best_account]
                self._size -= 1
                taken.append(job)
                holding[best_account] = holding.get(best_account, 0) + width
                free -= width
        return taken

    def close(self) -> list[Waiting]:
        """Refuse new jobs, wake the worker, and return the jobs still waiting."""
        with self._cond:
            self._closed = True
            left = [job for jobs in self._by_account.values() for _, job in jobs]
            self._by_account.clear()
            self._size = 0
            self._cond.notify_all()
        return left

    def reopen(self) -> None:
        """Accept jobs again (after ``close``, for a restarted backend)."""
        with self._cond:
            self._closed = False
