"""The GPU panel: every machine's GPUs, memory bar and history, processes and their runs,
and the inference host of each worker on it."""

from __future__ import annotations

import textwrap

from rich.text import Text
from textual.widget import Widget

from gpuboard.core.host.state import HostState
from gpuboard.core.models import GpuReading, GpuSample, LimitAdvice, Snapshot
from gpuboard.core.text_format import bar, host_parts, human_age, human_bytes, sparkline
from gpuboard.tui.history import History


def memory_key(gpu: GpuSample) -> str:
    """The History key of a GPU's used memory."""
    return f"mem:{gpu.key}"


class GpuPanel(Widget):
    """One block per machine: a header line, then a line per GPU and one of its processes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._data: tuple[Snapshot, History, float] | None = None

    def show(self, snapshot: Snapshot, history: History, now: float) -> None:
        self._data = (snapshot, history, now)
        self.refresh(layout=True)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return max(1, len(self.lines(width)))

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width))

    def lines(self, width: int) -> list[Text]:
        if self._data is None:
            return [Text("reading GPUs…", style="dim")]
        snapshot, history, now = self._data
        if not snapshot.gpu_readings:
            return [Text("no GPU readings: workers publish theirs with `gpuboard worker`", "dim")]
        advice = {w.advice.gpu_key: w.advice for w in snapshot.workers if w.advice is not None}
        out: list[Text] = []
        for reading in snapshot.gpu_readings:
            out.append(_machine_line(reading, now))
            if reading.unavailable:
                out.extend(_wrapped("  " + reading.unavailable, width, "yellow"))
            elif not reading.gpus:
                out.append(Text("  no GPU on this machine", style="dim"))
            for gpu in reading.gpus:
                out.extend(_gpu_lines(gpu, history, now, width, stale=reading.stale(now)))
                extra = _advice_line(advice.get(gpu.key))
                processes = _process_line(gpu, width)
                out.extend(line for line in (extra, processes) if line is not None)
            for worker in reading.workers:
                view = snapshot.worker(worker)
                if view is not None and view.host is not None:
                    out.extend(_host_lines(worker, view.host, now, width))
        # Hosts of workers that publish no GPU reading (an older gpuboard, NVML failing).
        placed = {worker for reading in snapshot.gpu_readings for worker in reading.workers}
        for view in snapshot.workers:
            if view.host is not None and view.name not in placed:
                out.extend(_host_lines(view.name, view.host, now, width))
        for line in out:
            line.truncate(width, overflow="ellipsis")
        return out


def _wrapped(text: str, width: int, style: str) -> list[Text]:
    indent = len(text) - len(text.lstrip())
    lines = textwrap.wrap(text.strip(), max(10, width - indent), subsequent_indent="  ")
    return [Text(" " * indent + line, style=style) for line in lines]


def _machine_line(reading: GpuReading, now: float) -> Text:
    line = Text(reading.host, style="bold")
    if reading.local:
        line.append(" (this machine)", style="dim")
    if reading.workers:
        line.append(" · " + ", ".join(reading.workers))
    if not reading.local:
        age = reading.age(now)
        line.append(f" · {human_age(age)} ago", style="dim")
        if reading.stale(now):
            line.append(" STALE", style="bold red")
    return line


def memory_text(used: int, total: int) -> str:
    """'31.0/80.0 GiB': the unit once where both sides share it."""
    used_text, total_text = human_bytes(used), human_bytes(total)
    used_number, _, used_unit = used_text.partition(" ")
    if used_unit == total_text.partition(" ")[2]:
        return f"{used_number}/{total_text}"
    return f"{used_text}/{total_text}"


def _gpu_lines(
    gpu: GpuSample, history: History, now: float, width: int, *, stale: bool
) -> list[Text]:
    """One line where the name fits beside the bars, else the name on a line of its own."""
    memory = " " + memory_text(gpu.memory_used, gpu.memory_total)
    util = "util n/a" if gpu.utilization is None else f"util {gpu.utilization:>3}%"
    head = f"  #{gpu.index} "
    fraction = gpu.memory_fraction
    colour = "red" if fraction > 0.9 else "yellow" if fraction > 0.7 else "green"
    name = gpu.name[:28]
    one_line = len(head) + len(name) + 1 + len(memory) + 2 + len(util) + 2
    two_lines = width - one_line < 16
    fixed = 5 + len(memory) + 2 + 2 if two_lines else one_line
    spare = max(0, width - fixed)
    bar_width = max(6, min(30, spare // 2))
    spark_width = max(0, spare - bar_width)
    values = history.buckets(memory_key(gpu), now, spark_width)
    memory_bar = Text.assemble(
        (bar(fraction, bar_width), "dim" if stale else colour),
        memory,
    )
    spark = Text(sparkline(values, spark_width, top=float(gpu.memory_total)), style=colour)
    title = Text.assemble(head, (name, "dim" if stale else "bold"))
    if two_lines:
        title.append(f"  {util}")
        return [title, Text.assemble("     ", memory_bar, "  ", spark)]
    return [Text.assemble(title, " ", memory_bar, "  ", util, "  ", spark)]


def _host_lines(worker: str, host: HostState, now: float, width: int) -> list[Text]:
    """'  gpu-1 host: ready · queue 3 · 2 holding …', wrapped between its parts."""
    style = "dim" if host.stale(now) else "bold red" if host.status == "failed" else ""
    lines = [Text.assemble("  ", (worker, "magenta"), " host: ")]
    for number, part in enumerate(host_parts(host, now)):
        piece = part if number == 0 else " · " + part
        if number and lines[-1].cell_len + len(piece) > width:
            lines.append(Text("    "))
            piece = part
        lines[-1].append(piece, style=style)
    return lines


def _advice_line(advice: LimitAdvice | None) -> Text | None:
    if advice is None:
        return None
    line = Text(
        f"     {advice.fits} fit ({human_bytes(advice.peak_per_inference)} peak each, "
        f"{human_bytes(advice.usable_memory)} free)"
    )
    shared = len(advice.sharing_workers) > 1
    owners = f" ({'+'.join(advice.sharing_workers)})" if shared else ""
    if advice.limit is None:
        line.append(f" · limit{owners} unknown", style="dim")
    elif advice.over_limit:
        need = human_bytes(advice.limit * advice.peak_per_inference)
        line.append(f" · ⚠ limit {advice.limit}{owners} needs {need}", style="bold red")
    else:
        line.append(f" · limit {advice.limit}{owners} ok", style="green")
    return line


def _process_line(gpu: GpuSample, width: int) -> Text | None:
    if not gpu.processes:
        return None
    line = Text("     ")
    for number, process in enumerate(gpu.processes):
        part = Text(f"pid {process.pid} {human_bytes(process.memory_used)}")
        if process.host_of:
            part.append(f" {process.host_of} host", style="magenta")
        elif process.flow_run_id:
            part.append(" " + (process.flow_run_name or process.flow_run_id[:8]), style="cyan")
        rest = len(gpu.processes) - number - 1
        more = f" · +{rest} more" if rest else ""
        if number and line.cell_len + 3 + part.cell_len + len(more) > width:
            line.append(f" · +{rest + 1} more", style="dim")
            break
        if number:
            line.append(" · ")
        line.append_text(part)
    return line
