"""The warm runners of one worker: K processes kept ready, one flow run each at a time.

`execute()` gives a flow run to an idle runner and waits for its answer, or for its
death: a runner killed mid-run (SIGKILL, the OOM killer) answers with the signal, which
the worker reports as the run's crash; a runner is replaced whenever it dies or retires
(after its run budget or past its memory budget). Cancelling a run kills only its runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuboard.core.child_process import prepare_child

log = logging.getLogger(__name__)

REPLACE_DELAYS_S = (0.0, 1.0, 2.0, 5.0, 10.0)  # after runners that die right away


class RunnerGone(RuntimeError):
    """The runner died before it could take the run."""


@dataclass
class Runner:
    """One runner process as the pool sees it."""

    process: asyncio.subprocess.Process
    replies: asyncio.StreamReader
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    flow_run_id: str | None = None
    answer: asyncio.Future[dict[str, Any]] | None = None
    runs: int = 0
    retiring: bool = False
    cancelled: bool = False
    spawned_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass(frozen=True)
class PoolState:
    """What the runners are doing, for the worker's reports."""

    size: int
    busy: int
    idle: int
    starting: int
    runs: int  # finished on this pool's runners
    recycled: int  # runners that retired after their budget
    replaced: int  # runners that died and were started again


class RunnerPool:
    """`size` warm runners started from `command(fd)`; start(), execute(), stop()."""

    def __init__(
        self,
        size: int,
        command: Callable[[int], Sequence[str]],
        *,
        env: dict[str, str] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.size = size
        self._command = command
        self._env = env
        self._on_change = on_change
        self._runners: dict[int, Runner] = {}
        self._idle: asyncio.Queue[Runner] = asyncio.Queue()
        self._stopping = False
        self._runs = self._recycled = self._replaced = 0
        self._failures_in_a_row = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn() for _ in range(self.size)))

    async def stop(self, grace_s: float = 30.0) -> None:
        """Let busy runners finish their run (up to `grace_s`), then end every runner."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        while any(r.flow_run_id for r in self._runners.values() if r.alive):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for runner in list(self._runners.values()):
            if runner.alive and runner.process.stdin is not None:
                runner.process.stdin.close()  # no more commands: it returns and exits
        await asyncio.sleep(0)
        for runner in list(self._runners.values()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(runner.process.wait(), 5)
            if runner.alive:
                with contextlib.suppress(ProcessLookupError):
                    runner.process.kill()
                await runner.process.wait()
        for task in list(self._tasks):
            task.cancel()

    # -- running ----------------------------------------------------------------------

    async def execute(
        self,
        flow_run_id: str,
        env: dict[str, str],
        started: Callable[[int], None],
        working_dir: str | None = None,
    ) -> tuple[int, int]:
        """Run `flow_run_id` on the next idle runner, in `working_dir` (else the runner's
        own scratch directory); (exit status, runner pid).

        `started(pid)` is called once the runner has the run (its infrastructure pid).
        A run cancelled through `cancel()` ends with status 0: its state is set already.
        """
        while True:
            runner = await self._idle.get()
            if runner.alive and not runner.retiring:
                break
        loop = asyncio.get_running_loop()
        runner.flow_run_id = flow_run_id
        runner.answer = loop.create_future()
        self._on_change()
        assert runner.process.stdin is not None
        command = {"op": "run", "flow_run_id": flow_run_id, "env": env, "cwd": working_dir}
        line = json.dumps(command) + "\n"
        try:
            runner.process.stdin.write(line.encode())
            await runner.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died just now: the answer below says how
        started(runner.pid)
        answer = await runner.answer
        code = int(answer.get("exit", 1))
        if runner.cancelled:
            code = 0
        runner.flow_run_id, runner.answer = None, None
        self._runs += 1
        if answer.get("retiring"):
            runner.retiring = True
            log.info("runner %s retires (%s): starting a fresh one", runner.pid, answer["retiring"])
        elif runner.alive:
            self._idle.put_nowait(runner)
        self._on_change()
        return code, runner.pid

    def busy_runs(self) -> dict[str, int]:
        """flow run id -> pid of the runner running it."""
        return {r.flow_run_id: r.pid for r in self._runners.values() if r.flow_run_id}

    def kill(self, pid: int, *, cancelled: bool = False) -> bool:
        """End runner `pid` (a cancel, or `kill_infrastructure`); False when it is not ours."""
        runner = self._runners.get(pid)
        if runner is None or not runner.alive:
            return False
        runner.cancelled = runner.cancelled or cancelled
        with contextlib.suppress(ProcessLookupError):
            runner.process.send_signal(signal.SIGKILL)
        return True

    def state(self) -> PoolState:
        alive = [r for r in self._runners.values() if r.alive]
        busy = sum(1 for r in alive if r.flow_run_id)
        ready = sum(1 for r in alive if r.ready.is_set())
        return PoolState(
            size=self.size,
            busy=busy,
            idle=max(0, ready - busy),
            starting=len(alive) - ready,
            runs=self._runs,
            recycled=self._recycled,
            replaced=self._replaced,
        )

    # -- runners ----------------------------------------------------------------------

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                env=self._env,
                preexec_fn=prepare_child,
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        replies = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(replies), os.fdopen(read_fd, "rb")
        )
        runner = Runner(process, replies)
        self._runners[process.pid] = runner
        task = asyncio.create_task(self._listen(runner), name=f"runner-{process.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._on_change()

    async def _listen(self, runner: Runner) -> None:
        """Read the runner's answers until it exits; then settle its run and replace it."""
        while True:
            line = await runner.replies.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                runner.ready.set()
                self._failures_in_a_row = 0
                self._idle.put_nowait(runner)
                self._on_change()
            elif "done" in message and runner.answer is not None:
                runner.runs += 1
                if message.get("retiring"):
                    runner.retiring = True
                if not runner.answer.done():
                    runner.answer.set_result(message)
        code = await runner.process.wait()
        if runner.answer is not None and not runner.answer.done():
            # Died with a run: SIGKILL reads -9, as a process worker's flow run would.
            runner.answer.set_result({"exit": code})
        del self._runners[runner.pid]
        if runner.retiring:
            self._recycled += 1
        else:
            self._replaced += 1
            if not runner.ready.is_set():
                self._failures_in_a_row += 1
        self._on_change()
        if not self._stopping:
            delay = REPLACE_DELAYS_S[min(self._failures_in_a_row, len(REPLACE_DELAYS_S) - 1)]
            if delay:
                log.warning("runner %s exited with %s before it was ready", runner.pid, code)
                await asyncio.sleep(delay)
            await self._spawn()
