"""The batch dialog (`b`): which image ids, from which source, previewed, then created with
a progress bar and ended with the exact report. Nothing reaches the server until every
field is valid and the operator submits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ProgressBar

from gpuboard.core.batch import (
    BatchInputError,
    BatchProgress,
    BatchReport,
    format_report,
    submit_batch,
    validate_source,
    validate_tags,
)
from gpuboard.core.id_ranges import IdRangeError, ids_from_start, parse_id_ranges
from gpuboard.core.images import SAMPLE


@dataclass(frozen=True)
class BatchPlan:
    """A batch the operator typed, checked: what Submit will send."""

    image_ids: list[int]
    source: str
    tags: tuple[str, ...]
    batch: str | None

    def preview(self) -> str:
        ids = self.image_ids
        first_last = f"id {ids[0]}" if len(ids) == 1 else f"ids {ids[0]} … {ids[-1]}"
        return f"will submit {len(ids)} run(s), {first_last}, from {self.source}"


def plan_batch(count: str, start: str, ids: str, source: str, tags: str, batch: str) -> BatchPlan:
    """Check the dialog's fields; BatchInputError says which one is wrong and why."""
    try:
        if ids.strip():
            image_ids = parse_id_ranges(ids)
        else:
            image_ids = ids_from_start(_whole(start, "start id"), _whole(count, "count"))
    except IdRangeError as exc:
        raise BatchInputError(str(exc)) from None
    tag_list = validate_tags([t for t in tags.split(",") if t.strip()])
    return BatchPlan(
        image_ids, validate_source(source.strip() or SAMPLE), tag_list, batch.strip() or None
    )


def _whole(text: str, field: str) -> int:
    cleaned = text.strip()
    if not cleaned.isdigit() or len(cleaned) > 13:
        raise BatchInputError(f"{field}: {cleaned!r} is not a whole number")
    return int(cleaned)


class BatchDialog(ModalScreen[BatchReport | None]):
    """Fields, a live preview, Submit (Enter), a progress bar, then the report."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, *, api_url: str, deployment: str, read_only: bool) -> None:
        super().__init__()
        self.api_url = api_url
        self.deployment = deployment
        self.read_only = read_only
        self.report: BatchReport | None = None
        self.submitting = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog batch-dialog"):
            yield Label(f"Submit a batch of {self.deployment} runs", classes="dialog-title")
            with Horizontal(classes="dialog-row"):
                yield Label("count", classes="field-label")
                yield Input("20", id="count", compact=True)
                yield Label("start id", classes="field-label")
                yield Input("1", id="start", compact=True)
            with Horizontal(classes="dialog-row"):
                yield Label("or ids", classes="field-label")
                yield Input(
                    placeholder="1-20,40,45-50 (instead of count/start)", id="ids", compact=True
                )
            with Horizontal(classes="dialog-row"):
                yield Label("source", classes="field-label")
                yield Input(
                    SAMPLE,
                    placeholder="sample or file:///data/{image_id}.png",
                    id="source",
                    compact=True,
                )
            with Horizontal(classes="dialog-row"):
                yield Label("tags", classes="field-label")
                yield Input(placeholder="optional, comma-separated", id="tags", compact=True)
                yield Label("batch", classes="field-label")
                yield Input(placeholder="default: the source", id="batch", compact=True)
            yield Label("", id="preview")
            yield ProgressBar(total=None, show_eta=False, id="progress")
            yield Label("", id="report")
            with Horizontal(classes="dialog-row"):
                yield Button("Submit", variant="primary", id="submit", compact=True)
                yield Button("Close", id="close", compact=True)

    def on_mount(self) -> None:
        self.query_one("#progress").display = False
        self.query_one("#count", Input).focus()
        self.check()

    def fields(self) -> tuple[str, str, str, str, str, str]:
        def value(field: str) -> str:
            return self.query_one(f"#{field}", Input).value

        return (
            value("count"),
            value("start"),
            value("ids"),
            value("source"),
            value("tags"),
            value("batch"),
        )

    def check(self) -> BatchPlan | None:
        """Validate the fields as they are typed; the preview line says what or why not."""
        preview = self.query_one("#preview", Label)
        try:
            plan = plan_batch(*self.fields())
        except BatchInputError as exc:
            preview.update(f"✗ {exc}")
            preview.set_class(True, "-invalid")
            self.query_one("#submit", Button).disabled = True
            return None
        preview.update(plan.preview())
        preview.set_class(False, "-invalid")
        self.query_one("#submit", Button).disabled = self.submitting or self.read_only
        return plan

    def on_input_changed(self) -> None:
        if not self.submitting:
            self.check()

    def on_input_submitted(self) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.submit()
        else:
            self.action_close()

    def submit(self) -> None:
        if self.submitting:
            return
        if self.read_only:
            self.app.notify("read-only: submitting batches is disabled", severity="warning")
            return
        plan = self.check()
        if plan is None:
            return  # the preview line already says why; nothing was sent
        self.submitting = True
        self.query_one("#submit", Button).disabled = True
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=len(plan.image_ids), progress=0)
        self.query_one("#report", Label).update("creating runs …")
        self._create(plan)

    @work(exclusive=True, group="batch", exit_on_error=False)
    async def _create(self, plan: BatchPlan) -> None:
        bar = self.query_one("#progress", ProgressBar)

        def progress(p: BatchProgress) -> None:
            bar.update(progress=p.done)

        try:
            report = await submit_batch(
                plan.image_ids,
                source=plan.source,
                batch=plan.batch,
                api_url=self.api_url,
                on_progress=progress,
                deployment=self.deployment,
                tags=plan.tags,
                read_only=self.read_only,
            )
        except Exception as exc:
            # Nothing or part was created; the keys make submitting again create the rest.
            self.query_one("#report", Label).update(
                f"✗ {type(exc).__name__}: {exc}\nSubmit again to create what is missing."
            )
            self.query_one("#report", Label).set_class(True, "-invalid")
        else:
            self.report = report
            self.query_one("#report", Label).update(format_report(report))
            self.query_one("#report", Label).set_class(not report.ok, "-invalid")
        finally:
            self.submitting = False
            self.check()

    def action_close(self) -> None:
        if self.submitting:
            self.app.notify("still creating runs: wait for the report", severity="warning")
            return
        self.dismiss(self.report)
