"""The limit advisor: how many inferences fit in a GPU, next to the limit that admits them.

NVML reports the GPU memory each process holds. A flow-run process on a GPU is an
inference (the GPU step is the only one that touches it), so the most any one of them has
held recently is the peak one inference needs. The memory the GPU has for inferences is
its total minus what everything else holds; that divided by the peak is how many fit.
When the limit (summed over the workers that share the GPU) times the peak exceeds it,
the GPU step can run out of memory: the board warns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

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


def advice_for_workers(
    gpus_of_worker: dict[str, tuple[GpuSample, ...]],
    limits: dict[str, int | None],
    tracker: PeakTracker,
) -> dict[str, LimitAdvice]:
    """Advice per worker: for the GPU its inferences run on, shared limits summed.

    Workers on one machine share its GPUs (the embedded stack runs several on one), so the
    limit that matters for a GPU is the sum over every worker that reports it. A worker's
    GPU is the first one where an inference peak is known.
    """
    sharing: dict[str, dict[str, int | None]] = {}
    for worker, gpus in gpus_of_worker.items():
        for gpu in gpus:
            sharing.setdefault(gpu.key, {})[worker] = limits.get(worker)
    advice: dict[str, LimitAdvice] = {}
    for worker, gpus in gpus_of_worker.items():
        for gpu in _with_peak_first(gpus, tracker):
            found = advise(gpu, tracker.peak(gpu.key), sharing.get(gpu.key, {}))
            if found is not None:
                advice[worker] = found
                break
    return advice


def _with_peak_first(gpus: Iterable[GpuSample], tracker: PeakTracker) -> list[GpuSample]:
    return sorted(gpus, key=lambda gpu: tracker.peak(gpu.key) is None)
