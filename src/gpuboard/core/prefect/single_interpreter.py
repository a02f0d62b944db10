"""Prefect's process worker with one interpreter per flow run instead of two.

Prefect 3.9.1's process worker, when a deployment sets no `command` job variable, starts
each flow run as `python -m prefect.runner._workspace_supervisor`, which prepares the
run's workspace and then execs `python -m prefect.engine`: two interpreter starts and two
`import prefect` per run. With a command it starts the engine directly, and the engine
runs the deployment's pull steps itself. Measured (bench/interpreter_start.py, 20 runs of
a trivial flow, 5 runs of the bench): 1.4-1.9 CPU s less per run for the worker's tree,
1.8-6.5 s sooner from process start to the flow body (p50).

What the supervisor did that this path does not, and why it does not matter to gpuboard's
deployments (checked by experiment, see bench/RESULTS.md): the workspace preparation
(pull steps: the engine runs them; dependency installation: off unless
PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES is set), the project on PYTHONPATH (gpuboard's
flow imports the installed package), a session of its own per run (a cancel kills the
engine's process only, not processes the flow started: process-image starts none), and
crash/cancel hooks run in a process of their own (process-image has none; the worker
imports the flow module to look for them).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from prefect.utilities.processutils import command_to_string
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from gpuboard.core.prefect.drain_gate import DrainGate
from gpuboard.core.prefect.run_labels import PatientLabels

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse


def engine_command() -> str:
    """The flow-run command: this interpreter, straight into Prefect's engine."""
    return command_to_string([sys.executable, "-m", "prefect.engine"])


class SingleInterpreterJobConfiguration(ProcessJobConfiguration):
    """A process job whose command, when the deployment sets none, is the engine itself."""

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: Flow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        if self.command is None:
            self.command = engine_command()
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )


class SingleInterpreterProcessWorker(DrainGate, PatientLabels, ProcessWorker):
    """Prefect's process worker (same job template) with one interpreter per flow run. A
    deployment's own `command` job variable still wins. Honours a drain (drain_gate.py).

    A type of its own: a subclass keeping `process` would replace Prefect's process
    worker in Prefect's registry of worker types for the whole process.
    """

    type = "gpuboard-process"
    job_configuration: Any = SingleInterpreterJobConfiguration

    def _record_work_pool_snapshot(self, work_pool: WorkPool) -> None:
        # A `process` pool's job template is this worker's own: serve it as ours rather
        # than have Prefect warn of a type mismatch at every start.
        if work_pool.type == "process":
            work_pool = work_pool.model_copy(update={"type": self.type})
        super()._record_work_pool_snapshot(work_pool)
