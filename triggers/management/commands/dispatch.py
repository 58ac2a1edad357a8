"""manage.py dispatch TRIGGER: queue executions in bulk as one batch, optionally wait and
summarise."""

import json
import time
from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from executions import services
from executions.models import Batch, Execution, ExecutionStatus
from executions.selectors import progress_of
from executions.waiters import wait_many
from kubefunction.commands import command_user, domain_errors_as_command_errors
from kubefunction.stats import ms, percentile
from triggers.models import Trigger

CHUNK = 500


def _json_lines(path: Path, text: str) -> list:
    payloads = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                payloads.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}:{number}: not JSON: {exc}") from exc
    return payloads


def read_payload_file(path: Path) -> list:
    """Payloads from a file holding one JSON array, or one JSON document per line (JSONL)."""
    if not path.is_file():
        raise CommandError(f"{path}: no such file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: not UTF-8 text ({exc}).") from exc
    payloads = None
    if text.lstrip().startswith("["):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # several lines, each its own document: JSONL
        if isinstance(document, list):
            payloads = document
    if payloads is None:
        payloads = _json_lines(path, text)
    if not payloads:
        raise CommandError(f"{path} holds no payload.")
    return payloads


def _read_payloads(payload: str | None, payload_file: Path | None) -> list:
    if payload is not None and payload_file is not None:
        raise CommandError("give --payload or --payload-file, not both.")
    if payload_file is not None:
        return read_payload_file(payload_file)
    if payload is None:
        return [services.USE_DEFAULT]
    try:
        return [json.loads(payload)]
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not JSON: {exc}") from exc


class Command(BaseCommand):
    help = ("Dispatch a trigger COUNT times (or once per payload of a JSON-array or JSONL file) "
            "as one batch, and optionally wait.")

    def add_arguments(self, parser):
        parser.add_argument("trigger")
        parser.add_argument("--payload", help="JSON event (default: the trigger's default).")
        parser.add_argument("--payload-file", type=Path,
                            help="A JSON array of events, or JSONL: one event per line.")
        parser.add_argument("--count", type=int, default=1,
                            help="Dispatch the payload(s) this many times.")
        parser.add_argument("--wait", action="store_true", help="Wait for results; summarise.")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait at most.")
        parser.add_argument("--owner", help="Username recorded as dispatcher.")
        parser.add_argument("--idempotency-key",
                            help="Name this dispatch (one payload): the same key within "
                                 "KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS gives back its first "
                                 "execution instead of a new one.")

    def handle(self, *args, trigger, payload, payload_file, count, wait, timeout, owner,
               idempotency_key=None, **options):
        if count < 1:
            raise CommandError("--count must be at least 1.")
        try:
            target = Trigger.objects.select_related("function__active_version").get(name=trigger)
        except Trigger.DoesNotExist:
            raise CommandError(f"no trigger named '{trigger}'.") from None
        payloads = _read_payloads(payload, payload_file) * count
        if idempotency_key is not None and len(payloads) != 1:
            raise CommandError("--idempotency-key names one dispatch: give one payload and no "
                               "--count.")
        user = command_user(owner)
        started = time.monotonic()
        with domain_errors_as_command_errors():
            for number, item in enumerate(payloads, 1):
                if item is not services.USE_DEFAULT:
                    services.payload_check(item, field=f"payload {number}")
            if idempotency_key is not None:
                execution = services.execution_dispatch(
                    trigger=target, payload=payloads[0], user=user, source="command",
                    idempotency_key=idempotency_key)
                if execution.replayed:
                    self.stderr.write(f"the key was dispatched before: task "
                                      f"{execution.task_id}, {execution.status}")
                ids, batch = [execution.pk], None
            else:
                ids, batch = self._dispatch(target, payloads, user)
        if batch is not None:
            self.stdout.write(f"batch {batch.pk}")
        if not wait:
            if len(ids) == 1:
                self.stdout.write(Execution.objects.get(pk=ids[0]).task_id)
            else:
                self.stdout.write(f"queued {len(ids)} executions of '{target.name}'.")
            return
        done = self._wait(ids, started + timeout)
        self._summarise(ids, done, time.monotonic() - started, batch)

    def _dispatch(self, target, payloads, user) -> tuple[list, Batch | None]:
        """Dispatch in chunks of CHUNK, all in one batch (when there is more than one)."""
        with tqdm(total=len(payloads), desc="dispatched", unit="exec",
                  disable=len(payloads) == 1, file=self.stderr) as bar:
            return services.batch_dispatch(trigger=target, payloads=payloads, user=user,
                                           source="command", chunk=CHUNK, progress=bar.update)

    def _wait(self, ids, deadline) -> dict:
        with tqdm(total=len(ids), desc="finished", unit="exec", disable=len(ids) == 1,
                  file=self.stderr) as bar:
            return wait_many(ids=ids, timeout=max(0.0, deadline - time.monotonic()),
                             on_progress=bar.update)

    def _summarise(self, ids, done: dict, elapsed: float, batch: Batch | None) -> None:
        if len(ids) == 1 and done:
            execution = Execution.objects.get(pk=ids[0])
            self.stdout.write(f"task {execution.task_id}: {execution.status}")
            body = execution.output if execution.status == ExecutionStatus.SUCCEEDED \
                else execution.error
            self.stdout.write(json.dumps(body, indent=2, ensure_ascii=False)
                              if not isinstance(body, str) else body)
        statuses = Counter(row[1] for row in done.values())
        self.stdout.write(
            f"{len(ids)} dispatched in {elapsed:.2f} s: "
            + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
            + (f", {len(ids) - len(done)} unfinished" if len(done) < len(ids) else ""))
        if batch is not None:
            progress = progress_of(batch)
            p50, p95 = progress.p50_seconds, progress.p95_seconds
        else:
            latencies = [(row[3] - row[2]).total_seconds() for row in done.values()]
            p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        self.stdout.write(f"retrieval time p50 {ms(p50)}, p95 {ms(p95)}; "
                          f"throughput {len(done) / elapsed:.1f}/s")
        failed = len(ids) - statuses.get(ExecutionStatus.SUCCEEDED, 0)
        if failed:
            raise CommandError(f"{failed} of {len(ids)} executions did not succeed.")
