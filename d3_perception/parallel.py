"""Work sharing for the per-frame numpy/OpenCV paths: per-thread scratch arrays reused across frames, and
:class:`RowWorkers`, the calling thread plus helper threads sharing a frame's row blocks and side tasks.

Used by :mod:`d3_perception.geometry` (clouds, normals) and the node's post-processing; nothing here knows
about images or clouds.
"""

from __future__ import annotations

import collections
import contextlib
import threading

import numpy as np

__all__ = ["ROWS_PER_CHUNK", "RowWorkers", "for_row_chunks", "scratch"]


class _Scratch(threading.local):
    """Per-thread temporaries reused across frames, one array per name (replaced when the shape changes).

    A fresh multi-MB numpy temporary costs more in page faults than the arithmetic on it (measured: ~0.5 ms
    per 640x480 float32 plane on this VM vs 0.04 ms for the ufunc), so the per-frame paths compute in these.
    Never returned to callers: only for values that die inside one call.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        a = self.arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype=dtype)
            self.arrays[name] = a
        return a


scratch = _Scratch()

ROWS_PER_CHUNK = 128  # rows processed together: per-pass working set stays in cache, scratch stays small


class _Task:
    __slots__ = ("fn", "state", "value", "error", "done")

    def __init__(self, fn) -> None:
        self.fn, self.state, self.value, self.error = fn, 0, None, None  # state: 0 queued, 1 running, 2 done
        self.done = threading.Event()


class RowWorkers:
    """The calling thread plus ``threads - 1`` helper threads sharing the row blocks
    (:func:`for_row_chunks`) and the independent tasks (:meth:`submit`) of one frame.

    Work is claimed, never assigned: a block or task that no helper has started when the caller needs it is
    run by the caller itself, so a helper that does not get a core (other processes busy) costs a little
    bookkeeping, never a wait. numpy and OpenCV release the GIL inside their loops, so on free cores the
    helpers run in parallel. With ``threads=1`` everything runs in the caller (``submit`` runs at once).
    Tasks must not use the same workers themselves (no nesting). ``close()`` stops the helpers (started on
    first use).
    """

    def __init__(self, threads: int = 2) -> None:
        if int(threads) != threads or threads < 1:
            raise ValueError(f"`threads` must be an integer >= 1; got {threads}")
        self.threads = int(threads)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Task] = collections.deque()
        self._helpers: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn) -> _Task:
        """Queue ``fn()`` for a helper (with one thread: run it now); get its value with :meth:`result`."""
        task = _Task(fn)
        if self.threads == 1:
            self._execute(task)
            return task
        with self._cond:
            if self._closed:
                raise RuntimeError("`RowWorkers` is closed")
            if not self._helpers:
                self._helpers = [threading.Thread(target=self._run, name=f"d3_rows_{i}", daemon=True)
                                 for i in range(self.threads - 1)]
                for t in self._helpers:
                    t.start()
            self._queue.append(task)
            self._cond.notify()
        return task

    def result(self, task: _Task):
        """``task``'s value (its exception is raised here); run here if no helper has started it."""
        if self._claim(task):
            self._execute(task)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.value

    def map(self, fns) -> list:
        """``[fn() for fn in fns]``, shared with the helpers (which take from the front, this thread from the
        back). Returns (or raises the first error) once every call has finished."""
        tasks = [self.submit(fn) for fn in fns]
        for task in reversed(tasks):
            if self._claim(task):
                self._execute(task)
        for task in tasks:
            task.done.wait()
        return [self.result(task) for task in tasks]

    @contextlib.contextmanager
    def batch(self):
        """``with workers.batch() as submit:`` -- :meth:`submit` whose tasks are all settled (:meth:`settle`)
        when the block exits, also when it raises."""
        tasks: list[_Task] = []

        def submit(fn) -> _Task:
            tasks.append(self.submit(fn))
            return tasks[-1]

        try:
            yield submit
        finally:
            self.settle(tasks)

    def settle(self, tasks: list[_Task]) -> None:
        """Cancel the ``tasks`` no thread has started, then wait until the others have finished (errors
        ignored): after a failure, no task of a frame may still write into buffers the next frame reuses."""
        for task in tasks:
            if self._claim(task):
                task.fn = None
                task.state = 2
                task.done.set()
        for task in tasks:
            task.done.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            helpers, self._helpers = self._helpers, []
        for t in helpers:
            t.join(timeout=10.0)

    def _claim(self, task: _Task) -> bool:
        with self._cond:
            if task.state != 0:
                return False
            task.state = 1
            return True

    @staticmethod
    def _execute(task: _Task) -> None:
        try:
            task.value = task.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the thread that asks for the result
            task.error = exc
        task.fn = None  # drop references to the frame's arrays
        task.state = 2
        task.done.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                task = self._queue.popleft()
                if task.state != 0:  # taken over by the caller
                    continue
                task.state = 1
            self._execute(task)


def for_row_chunks(fn, n_rows: int, workers: RowWorkers | None = None) -> list:
    """``fn(r0, r1)`` for consecutive blocks of at most :data:`ROWS_PER_CHUNK` rows; the results in order.

    Blocks keep each pass's working set in cache (a whole-frame pass streams every plane through memory);
    they have equal sizes (480 rows: 4 x 120), so per-thread scratch arrays keep their shape, and their
    count is a multiple of the ``workers``' threads, which share them. Rows are independent, so the result
    is the same as one call on all rows.
    """
    threads = workers.threads if workers is not None else 1
    n = max(1, -(-n_rows // ROWS_PER_CHUNK))
    n = -(-n // threads) * threads
    step = max(1, -(-n_rows // n))
    bounds = [(r, min(n_rows, r + step)) for r in range(0, n_rows, step)]
    if threads == 1 or len(bounds) < 2:
        return [fn(r0, r1) for r0, r1 in bounds]
    return workers.map([lambda r0=r0, r1=r1: fn(r0, r1) for r0, r1 in bounds])
