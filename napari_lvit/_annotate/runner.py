"""Runs a retraining in the background and reports its events as dicts.

"process" (the default) starts ``python -m src_models.cli retrain FOLDER --config - --jsonl``
with a QProcess, writes the :class:`~src_models.project.retrain.RetrainConfig` as JSON to its
stdin and reads one event per stdout line; "thread" iterates
:func:`~src_models.project.retrain.retrain` in a napari thread worker. Either way the viewer
never waits for training (``benchmarks/bench_responsiveness.py`` measures both).

The runner keeps the run's events and tells what they mean: a new current checkpoint, a
failure (in an event, a crash, a bad exit), the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QProcess, QProcessEnvironment, Signal

from napari_lvit._annotate.events import JsonLines, Tail, failure, new_checkpoint

if TYPE_CHECKING:
    from qtpy.QtWidgets import QWidget

    from src_models.project.retrain import RetrainConfig

ROOT = Path(__file__).resolve().parents[2]  # the checkout, for a process of an uninstalled tree
ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}


def retrain_command(folder: str | os.PathLike) -> list[str]:
    """The training process's command line; its config comes as JSON on stdin."""
    return [
        sys.executable,
        "-m",
        "src_models.cli",
        "retrain",
        str(folder),
        "--config",
        "-",
        "--jsonl",
    ]


class RetrainRunner(QObject):
    """One retraining at a time, in a separate process or a thread worker."""

    #: one event (``event_to_dict`` of a retraining event, or ``{"type": "Error", ...}``)
    event = Signal(object)
    #: a round ended and its checkpoint (the path) is the project's current model now
    checkpoint_ready = Signal(str)
    #: the run failed: why (once per failure)
    failed = Signal(str)
    #: the run ended: exit code (``None``: no code) and whether the process crashed
    finished = Signal(object, bool)

    def __init__(self, owner: QWidget) -> None:
        super().__init__(owner)
        self._owner = owner
        self.process: QProcess | None = None
        self._worker = None
        self._run = None
        self._stopper: _Stopper | None = None
        self._lines = JsonLines()
        self.stderr = Tail()
        self.events: list[dict[str, Any]] = []  # this run's events, in order
        self.last: dict[str, Any] | None = None  # its last RetrainRoundEnd or RetrainDone
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self.process is not None or self._worker is not None

    def start(
        self, folder: str | os.PathLike, config: RetrainConfig, mode: str = "process"
    ) -> None:
        if self.running:
            raise RuntimeError("a retraining is already running")
        self._lines = JsonLines()
        self.stderr = Tail()
        self.events = []
        self.last = self.error = None
        if mode == "thread":
            self._start_thread(folder, config)
        else:
            self._start_process(folder, config)

    def cancel(self) -> bool:
        """Ask the run to stop between events (it is recorded as cancelled); False if idle."""
        if self.process is not None:
            self.process.terminate()  # SIGTERM: the CLI cancels between events
            return True
        if self._run is not None:
            self._run.cancel()
            return True
        return False

    def handle_event(self, event: dict[str, Any]) -> None:
        """Record one event, pass it on, and emit what it means."""
        self.events.append(event)
        kind = event.get("type")
        if kind in ("RetrainRoundEnd", "RetrainDone"):
            self.last = event
        self.event.emit(event)
        if kind == "RetrainRoundEnd":
            checkpoint = new_checkpoint(event)
            if checkpoint is not None:
                self.checkpoint_ready.emit(checkpoint)
            elif event.get("status") == "failed":
                self._fail(event.get("error") or "unknown error")
        elif kind == "Error":
            self._fail(str(event.get("message")))

    def _fail(self, message: str) -> None:
        self.error = message
        self.failed.emit(message)

    # ------------------------------------------------------------------ process

    def _start_process(self, folder: str | os.PathLike, config: RetrainConfig) -> None:
        proc = QProcess()
        env = QProcessEnvironment.systemEnvironment()
        paths = (str(ROOT), env.value("PYTHONPATH"))
        env.insert("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        for key, value in ENV_DEFAULTS.items():
            if not env.contains(key):
                env.insert(key, value)
        proc.setProcessEnvironment(env)
        payload = config.to_json().encode("utf-8")

        def send_config() -> None:
            proc.write(payload)
            proc.closeWriteChannel()  # closes once the config is written: EOF for the CLI

        proc.started.connect(send_config)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_process_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self.process = proc
        self._stopper = _terminate_on_destroy(self._owner, proc)
        program, *args = retrain_command(folder)
        proc.start(program, args)

    def _read_stdout(self) -> None:
        if self.process is None:
            return
        for event in self._lines.feed(bytes(self.process.readAllStandardOutput())):
            self.handle_event(event)

    def _read_stderr(self) -> None:
        if self.process is None:
            return
        self.stderr.add(bytes(self.process.readAllStandardError()).decode("utf-8", "replace"))

    def _on_process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.handle_event({"type": "Error", "message": "the training process could not start"})
            self._finish(None, False)

    def _on_process_finished(self, exit_code: int = 0, exit_status=None) -> None:
        self._read_stdout()
        self._read_stderr()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        self._finish(None if crashed else int(exit_code), crashed)

    # ------------------------------------------------------------------ thread

    def _start_thread(self, folder: str | os.PathLike, config: RetrainConfig) -> None:
        from napari.qt.threading import create_worker

        from src_models.project.retrain import event_to_dict, retrain

        run = retrain(folder, config=config)
        self._run = run
        failed = []

        def job():
            for event in run:
                yield event_to_dict(event)

        def on_error(exc: Exception) -> None:
            failed.append(exc)
            from napari_lvit._errors import error_line

            self.handle_event({"type": "Error", "message": error_line(exc)})

        worker = create_worker(job)
        worker.yielded.connect(self.handle_event)
        worker.errored.connect(on_error)
        worker.finished.connect(lambda: self._finish(1 if failed else 0, False))
        self._worker = worker
        worker.start()

    # ------------------------------------------------------------------ end

    def _finish(self, exit_code: int | None, crashed: bool) -> None:
        if not self.running:
            return
        if self._stopper is not None:
            self._stopper.disconnect()
            self._stopper = None
        self.process = self._worker = self._run = None
        if self.error is None:
            why = failure(exit_code, crashed, self.stderr.last_lines(), self.last)
            if why is not None:
                self._fail(why)
        self.finished.emit(exit_code, crashed)


class _Stopper:
    """Connections that stop a training process when the widget or the app goes away."""

    def __init__(self, widget: QWidget, stop) -> None:
        from qtpy.QtWidgets import QApplication

        self._connections = []
        for signal in (widget.destroyed, getattr(QApplication.instance(), "aboutToQuit", None)):
            if signal is not None:
                signal.connect(stop)
                self._connections.append((signal, stop))

    def disconnect(self) -> None:
        for signal, slot in self._connections:
            with contextlib.suppress(RuntimeError, TypeError):
                signal.disconnect(slot)
        self._connections = []


def _terminate_on_destroy(widget: QWidget, proc: QProcess) -> _Stopper:
    """When the widget or the application goes away, ask the training process to cancel
    (SIGTERM) and wait a little, so that its round is recorded as cancelled, not left running."""

    def stop(*_args) -> None:
        try:
            if proc.state() != QProcess.ProcessState.NotRunning:
                proc.terminate()
                if not proc.waitForFinished(5000):
                    proc.kill()
                    proc.waitForFinished(1000)
        except RuntimeError:  # already deleted
            pass

    return _Stopper(widget, stop)
