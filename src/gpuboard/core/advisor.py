"""The limit advisor: how many inferences fit in a GPU, next to the limit that admits them.

With gpuboard workers, one inference host per worker holds the model on its GPU and
measures what one inference adds on top of it (host/gpu_memory.py): GPU memory is the
models plus limit x that peak, so what fits is the GPU's total, less what other
processes and the models hold, divided by the peak. Without a host (plain Prefect
workers, each flow run its own process), a flow-run process on a GPU is an inference,
so the most any one of them held recently is the peak. When the limit (summed over the
workers that share the GPU) times the peak exceeds what there is, the GPU step can run
out of memory: the board warns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gpuboard.core.host.state import HostState
from gpuboard.core.models import GpuSample, LimitAdvice

# How far back the peak looks: long enough to have seen the largest image of a batch,
# short enough to forget a model that was swapped for a smaller one.
PEAK_WINDOW_SECONDS = 1800.0


class PeakTracker:
    """Remembers, per GPU, the most memory one inference process held within the window."""

    def __init__(self, window_seconds: float = PEAK_WINDOW_SECONDS) -> None:
        self.window = window_seconds
        self._seen: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, gpu: GpuSample) -> None:
        biggest = max(
            (p.memory_used for p in gpu.processes if p.is_inference and p.memory_used),
            default=None,
        )
        samples = self._seen.setdefault(gpu.key, deque())
        if biggest is not None and (not samples or samples[-1][0] < gpu.sampled_at):
            samples.append((gpu.sampled_at, biggest))
        while samples and samples[0][0] < gpu.sampled_at - self.window:
            samples.popleft()

    def peak(self, gpu_key: str) -> int | None:
        samples = self._seen.get(gpu_key)
        return max((used for _, used in samples), default=None) if samples else None


def usable_memory(gpu: GpuSample) -> int:
    """GPU memory an inference can have: the total minus what non-inference users hold."""
    inference = sum(p.memory_used or 0 for p in gpu.processes if p.is_inference)
    others = max(0, gpu.memory_used - inference)
    return max(0, gpu.memory_total - others)


def advise(gpu: GpuSample, peak: int | None, limits: dict[str, int | None]) -> LimitAdvice | None:
    """Advice for `gpu` given the peak per inference and the limits of the workers on it.

    None until an inference has been seen on the GPU: there is no peak to reason from.
    A worker without a limit (no GCL) makes the combined limit unknown (None): unlimited.
    """
    if not peak:
        return None
    usable = usable_memory(gpu)
    return _advice(gpu, peak, usable, limits)


def advise_from_hosts(
    gpu: GpuSample, hosts: dict[str, HostState], limits: dict[str, int | None]
) -> LimitAdvice | None:
    """Advice for `gpu` from the inference hosts on it (worker -> its host's state).

    None until a host has measured an inference's peak on it.
    """
    peaks = [h.gpu_memory_peak_per_inference for h in hosts.values()]
    peak = max((p for p in peaks if p), default=None)
    if peak is None:
        return None
    host_pids = {h.pid for h in hosts.values() if h.pid is not None}
    held_by_hosts = sum(p.memory_used or 0 for p in gpu.processes if p.pid in host_pids)
    others = max(0, gpu.memory_used - held_by_hosts)
    models = sum(h.gpu_memory_model or 0 for h in hosts.values())
    usable = max(0, gpu.memory_total - others - models)
    return _advice(gpu, peak, usable, limits)


def _advice(gpu: GpuSample, peak: int, usable: int, limits: dict[str, int | None]) -> LimitAdvice:
    """How many fit at `peak` in `usable`, beside the limits of the workers sharing `gpu`.
    A worker without a limit (no GCL) makes the combined limit unknown (None): unlimited."""
    known = [limit for limit in limits.values() if limit is not None]
    combined = sum(known) if len(known) == len(limits) and known else None
    return LimitAdvice(
        gpu_key=gpu.key,
        peak_per_inference=peak,
        usable_memory=usable,
        fits=usable // peak,
        limit=combined,
        sharing_workers=tuple(sorted(limits)),
    )


def host_gpu_index(host: HostState | None) -> int | None:
    """The GPU a host runs its model on ("cuda:1" -> 1); None on the CPU or unknown."""
    device = host.device if host is not None else None
    if not device or not device.startswith("cuda:"):
        return None
    index = device.partition(":")[2]
    return int(index) if index.isdigit() else None


def advice_for_workers(
    gpus_of_worker: dict[str, tuple[GpuSample, ...]],
    limits: dict[str, int | None],
    tracker: PeakTracker,
    hosts: dict[str, HostState] | None = None,
) -> dict[str, LimitAdvice]:
    """Advice per worker: for the GPU its inferences run on, shared limits summed.

    Workers on one machine share its GPUs (the embedded stack runs several on one), so the
    limit that matters for a GPU is the sum over every worker that reports it. A worker
    with an inference host on a GPU is advised from the hosts' measurements; another's GPU
    is the first one where an inference peak is known.
    """
    hosts = hosts or {}
    on_gpu: dict[str, dict[str, HostState]] = {}  # GPU key -> worker -> host
    for worker, gpus in gpus_of_worker.items():
        index = host_gpu_index(hosts.get(worker))
        for gpu in gpus:
            if index is not None and gpu.index == index:
                on_gpu.setdefault(gpu.key, {})[worker] = hosts[worker]
    sharing: dict[str, dict[str, int | None]] = {}
    for worker, gpus in gpus_of_worker.items():
        for gpu in gpus:
            index = host_gpu_index(hosts.get(worker))
            if index is None or gpu.index == index:
                sharing.setdefault(gpu.key, {})[worker] = limits.get(worker)
    advice: dict[str, LimitAdvice] = {}
    for worker, gpus in gpus_of_worker.items():
        index = host_gpu_index(hosts.get(worker))
        if index is not None:
            found = next(
                (
                    advise_from_hosts(gpu, on_gpu.get(gpu.key, {}), sharing.get(gpu.key, {}))
                    for gpu in gpus
                    if gpu.index == index
                ),
                None,
            )
            if found is not None:
                advice[worker] = found
            continue
        for gpu in _with_peak_first(gpus, tracker):
            found = advise(gpu, tracker.peak(gpu.key), sharing.get(gpu.key, {}))
            if found is not None:
                advice[worker] = found
                break
    return advice


def _with_peak_first(gpus: Iterable[GpuSample], tracker: PeakTracker) -> list[GpuSample]:
    return sorted(gpus, key=lambda gpu: tracker.peak(gpu.key) is None)
