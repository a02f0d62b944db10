"""The help screen on `?`: every key of the board and what each column means."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

MEANINGS = """\
## Workers
- **Status** — `●` online, with the age of its last heartbeat; `○` (red) when it missed
  three heartbeats; `gone` for a `gpu:*` GCL whose worker is not in the pool;
  **DRAINING** for a drained worker (`d`) that still has flow runs, **DRAINED** once it
  has none: it takes no new runs (the pool's other workers take them) until `d` again.
- **GPU slots** — slots in use / limit of the worker's GCL `gpu:<worker>`.
  **PAUSED** is limit 0: GPU steps wait, none fail; `(n)` slots are still held by
  inferences that started before the pause. **UNPROTECTED**: the worker has no GCL, or
  a disabled one, so its GPU step would run unlimited.
- **Wait / DL / Inf / Save** — its running flow runs by step: waiting for a GPU slot,
  downloading, inferring (holding a slot), saving. With an inference host (every
  `gpuboard worker` has one) Wait and Inf are the host's own queue and slot holders, live.
  Without one (a plain Prefect worker) they are counted from task runs, which show a run
  waiting for its slot and one holding it alike: Wait is then the runs in the GPU step
  beyond the slots in use. A `+` means more runs than one refresh reads (200): the
  numbers are a floor.
- **Host** — the worker's inference host, the one process of the worker that loads the
  model and touches the GPU: `loading`, `ready`, `restart` (it died: its slots were
  released, it is being started again), `FAILED` (its model cannot load: the GPU panel
  says why); dim when not heard from for 20 s; `—` for a worker without one.
- **Fits** — the limit advisor: how many inferences fit in the GPU's memory (beside the
  models the hosts hold) at the peak one inference needs, as the host measured it; red
  `⚠` when the limit (summed over workers sharing the GPU) admits more than fit. The GPU
  panel shows the figures behind it.
- **Last 5 min** — slots in use over the last five minutes.

## GPU memory
One block per machine: this one (read here with NVML) and every machine whose
`gpuboard worker` publishes its readings; their age is shown, **STALE** after 30 s.
Processes are mapped to the flow run they execute where the PID tells, and to the worker
whose inference host they are. Under each machine, one line per worker's host: its state,
device, model load time, inference p50/p95, queue, slots held and, on a GPU, the memory
one inference needs.

## Runs
Counts of the pool's runs: queued now (scheduled and due, late, pending), running, and
finished in the last hour; then, per worker, where its runs' time goes (medians over the
runs of the last 10 minutes: queue = due until a worker took it, start = taken until the
flow body ran, dl, wait for the GPU slot, infer, save) with its executor (warm runners
busy / size, or a process per run); then the running runs with their worker, step and
elapsed time, the latest failures with their message, and the next queued runs, each
with why it waits (pool or queue paused, no worker online, workers draining or at their
flow-run limit, runs ahead of it; `gpuboard why RUN` says the same). A long
`start` says the machine starts runs slowly (warm runners fix that); a long `wait` with
short `infer` says the slot, not the GPU, is the bottleneck.

Tab moves the focus to the runs panel (its title turns reversed): up/down (or j/k) move
a cursor over the runs shown, kept on its run across refreshes. Run actions apply to the
run under it: `c` cancels it when it is queued (after a y/n), else asks which queued run.

`/` filters the runs panel, k9s-style, as you type: plain words match the run's name and
image id (`#42`); `state:failed`, `state:queued`, `worker:gpu-1`, `batch:NAME`,
`image:42` narrow by one field (a comma gives alternatives: `state:failed,crashed`);
terms combine. Enter keeps the filter (shown in the panel's title), Escape clears it.
While a filter is set, each refresh also reads up to 200 of the pool's newest runs the
server can narrow to, so finished runs and whole batches are found, not only the rows
the panel lists.

## Timeline (`t`)
Per worker, one lane per GPU slot over the last 5 minutes (`+`/`-` zoom: 1, 2, 5, 10,
30): each inference a bar (bold while it holds its slot now), from the reports runs
publish when they end and the inference host's live slot holders. Below the lanes, the
number of runs waiting for a slot in each column; `░` marks a slot left idle while runs
waited. The heading says the slots busy over the window and the runs waiting now.
Lanes beyond the limit (red `+`) mean inferences overlapped more than the limit allows
now (it was lowered meanwhile).

## Retry (`R`) and logs (`l`)
`R` lists the batches with Failed or Crashed runs (the selected run's batch highlighted)
and retries the one picked, after y/n: the same runs are re-queued (AwaitingRetry) for a
worker of their pool; the report says which were re-queued and which were skipped and
why. A re-queued run is no longer failed, so retrying again re-queues nothing. `l` opens
the selected run's Prefect logs (with none selected, pick a run shown; its task runs'
lines included), following it while it runs: `v` steps the lowest level, `/` searches.

## Holders (`h`)
Who holds each GPU slot: the flow run, its state, how long it has held the slot, and
whether the holder is alive or **DEAD** (its process gone, its run finished or deleted).
Below, runs with no live process: Running with no heartbeat for three heartbeat periods,
Pending for two minutes, or at once where this machine sees the process gone. `x`
releases a dead holder's slot, `k` marks a stale Running run Crashed (`K` all of them),
`s` puts a stuck Pending run back to Scheduled; each asks first and is audited.

## When a source fails
A banner says which and why; the last data stays on screen, marked stale, and the board
recovers by itself when the source answers again.

## When nothing changes
After ten reads that showed nothing new the board reads every 5 s (the status line says
how old the data is); the first change it sees, or any key, brings the refresh back.
"""


class HelpScreen(ModalScreen[None]):
    """Keys (from the app's bindings, so new actions appear here by themselves) and meanings."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close", key_display="esc"),
    ]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        rows = "\n".join(f"| `{key}` | {description} |" for key, description in self.keys)
        text = f"# gpuboard\n\n| Key | Action |\n|---|---|\n{rows}\n\n{MEANINGS}"
        with VerticalScroll(id="help-body"):
            yield Markdown(text)
