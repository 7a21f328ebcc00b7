"""The worker's JSON-lines protocol: one train command in on stdin, events out on stdout, logs on stderr.

Commands (stdin, one JSON object a line): first {"type": "train", "spec": {...}}, later optionally {"type":
"cancel"}. Events (stdout): validated, started, metrics, checkpoint, finished, failed, cancelled; each carries
a monotonically increasing "seq" and the spec's job_id when given. stdout carries nothing else: the real
stdout is kept privately for events and sys.stdout is pointed at stderr, so prints and warnings of libraries
land in the log. Exit code: 0 finished or cancelled, 2 user error, 1 system error.

A `failed` event carries `kind` (user_error | system_error), `message`, `reason` (UPPER_SNAKE_CASE, e.g.
INVALID_JSON, INVALID_UTF8, MISSING_FIELD, ROW_TOO_LONG, INVALID_VALUE, NAN_LOSS, MISSING_PACKAGE;
UNEXPECTED_ERROR for an exception the worker did not anticipate) and, where one is to blame, `field` (the spec
field: `train_file`, `lora_r`, `target_modules[1]`, ...) and `line` (1-based, in that file).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import traceback
from typing import IO, Any

EXIT_OK = 0
EXIT_SYSTEM_ERROR = 1
EXIT_USER_ERROR = 2


class EventWriter:
    """Writes protocol events as JSON lines, numbered by `seq`, safe to call from any thread."""

    def __init__(self, stream: IO[str], job_id: str | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._seq = 0
        self.job_id = job_id

    def __call__(self, event_type: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            event: dict[str, Any] = {"type": event_type, "seq": self._seq}
            if self.job_id is not None:
                event["job_id"] = self.job_id
            event.update({k: _finite(v) for k, v in fields.items()})
            self._stream.write(json.dumps(event, allow_nan=False) + "\n")
            self._stream.flush()
            return event


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: send them as strings so the line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_commands(stdin: IO[str], cancel: threading.Event, log: IO[str]) -> None:
    """Reader thread body: sets `cancel` on a cancel command; other lines are logged and ignored.

    End of input also cancels: the parent (the trainer service) holds stdin open for the whole job, so EOF
    means it went away (crashed or was killed). Stopping at the next step with a checkpoint beats training on
    with nobody to read the events; the replica that takes the job over resumes it from that checkpoint.
    """
    for line in stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
        except json.JSONDecodeError:
            print(f"ignoring a stdin line that is not JSON: {line.strip()[:200]}", file=log)
            continue
        if isinstance(command, dict) and command.get("type") == "cancel":
            cancel.set()
        else:
            print(f"ignoring an unexpected command: {line.strip()[:200]}", file=log)
    print("stdin closed: the parent is gone; stopping at the next step with a checkpoint", file=log)
    cancel.set()


def run(stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """Serve one job. `stdout` receives protocol events only."""
    from ragtune_worker.spec import UserError, WorkerError, parse_spec

    emit = EventWriter(stdout)

    def failed(error: WorkerError) -> int:
        located = {"field": error.field, "line": error.line}
        emit(
            "failed",
            kind=error.kind,
            reason=error.reason,
            message=str(error),
            **{k: v for k, v in located.items() if v is not None},
        )
        return EXIT_USER_ERROR if isinstance(error, UserError) else EXIT_SYSTEM_ERROR

    first = stdin.readline()
    try:
        try:
            command = json.loads(first) if first.strip() else None
        except json.JSONDecodeError as error:
            raise UserError(
                f"the first stdin line must be a JSON train command: {error.msg}", reason="INVALID_COMMAND"
            ) from error
        if not isinstance(command, dict) or command.get("type") != "train":
            raise UserError(
                'the first stdin line must be {"type": "train", "spec": {...}}', reason="INVALID_COMMAND"
            )
        raw_spec = command.get("spec")
        if isinstance(raw_spec, dict) and isinstance(raw_spec.get("job_id"), str):
            emit.job_id = raw_spec["job_id"]
        spec = parse_spec(raw_spec)
    except UserError as error:
        return failed(error)

    cancel = threading.Event()
    threading.Thread(
        target=read_commands, args=(stdin, cancel, stderr), name="stdin-commands", daemon=True
    ).start()

    from ragtune_worker.train import run_job

    try:
        run_job(spec, emit, cancel)
    except WorkerError as error:
        return failed(error)
    except Exception as error:  # noqa: BLE001 - every other failure is reported, with its trace on stderr
        traceback.print_exc(file=stderr)
        emit(
            "failed",
            kind="system_error",
            reason="UNEXPECTED_ERROR",
            message=f"{type(error).__name__}: {error}",
        )
        return EXIT_SYSTEM_ERROR
    return EXIT_OK


def main() -> int:
    # Keep the real stdout (fd 1) privately for events and point fd 1 and sys.stdout at stderr, so that
    # anything printed by libraries, from Python or native code, goes to the log, never into the protocol.
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return run(sys.stdin, events, sys.stderr)
    finally:
        events.flush()
