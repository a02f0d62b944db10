"""Plain-text renderings shared by the board and `gpuboard status`: sizes, ages, bars, sparks."""

from __future__ import annotations

from collections.abc import Sequence

from gpuboard.core.host.state import HostState

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_EIGHTHS = " ▏▎▍▌▋▊▉"
SPARKS = "▁▂▃▄▅▆▇█"


def human_bytes(value: float | None) -> str:
    """1536 -> '1.5 KiB'; one decimal below 100 of a unit, none above."""
    if value is None:
        return "n/a"
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.1f} {unit}" if abs(size) < 100 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    """Seconds as the shortest honest age: '0.4s', '12s', '3m05s', '2h10m', '3d'."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar `width` cells wide, filled to `fraction` with eighth-cell precision."""
    if width <= 0:
        return ""
    clamped = min(1.0, max(0.0, fraction))
    eighths = round(clamped * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> str:
    """The last `width` values as block characters scaled to `top` (default: their maximum).

    None (no sample for that slot) renders as a blank, so a young history starts empty.
    """
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    known = [v for v in tail if v is not None]
    scale = top if top is not None else max(known, default=0.0)
    cells = []
    for value in tail:
        if value is None:
            cells.append(" ")
        elif scale <= 0 or value <= 0:
            cells.append(SPARKS[0])
        else:
            level = min(len(SPARKS) - 1, int(value / scale * (len(SPARKS) - 1) + 0.5))
            cells.append(SPARKS[level])
    return "".join(cells).rjust(width)


def describe_host(host: HostState, now: float) -> str:
    """One line about a worker's inference host, most telling first: 'ready · queue 3 ·
    2 holding (longest 0.4s) · p50 0.21s p95 0.38s · 2.4 GiB/inference · cuda:0 · ...'."""
    return " · ".join(host_parts(host, now))


def host_parts(host: HostState, now: float) -> list[str]:
    """The pieces of `describe_host`, for a caller that wraps them between lines."""
    parts = [host.status.upper() if host.status in ("failed", "restarting") else host.status]
    if host.stale(now):
        parts[0] += f" (last heard {human_age(host.age(now))} ago)"
    if host.error:
        parts.append(host.error)
    parts.append(f"queue {host.queued}" + (" PAUSED" if host.paused else ""))
    if host.holders:
        longest = max(holder.held_for(now) for holder in host.holders)
        parts.append(f"{len(host.holders)} holding (longest {human_age(longest)})")
    if host.inference_p50_s is not None and host.inference_p95_s is not None:
        parts.append(f"p50 {host.inference_p50_s:.2f}s p95 {host.inference_p95_s:.2f}s")
    if host.gpu_memory_peak_per_inference is not None:
        parts.append(f"{human_bytes(host.gpu_memory_peak_per_inference)}/inference")
    if host.device:
        parts.append(host.device)
    if host.load_s is not None:
        parts.append(f"loaded in {host.load_s:.1f}s")
    if host.model_loads > 1 or host.restarts:
        loads = "load" if host.model_loads == 1 else "loads"
        restarts = "restart" if host.restarts == 1 else "restarts"
        parts.append(f"{host.model_loads} {loads}, {host.restarts} {restarts}")
    return parts
