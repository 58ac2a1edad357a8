"""manage.py dispatch TRIGGER: queue executions in bulk, optionally wait and summarise."""

import json
import time
from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from executions import services
from executions.models import Execution, ExecutionStatus
from executions.selectors import finished_among
from kubefunction.commands import command_user, domain_errors_as_command_errors
from metrics.stats import ms, percentile
from triggers.models import Trigger

CHUNK = 500


def _read_payloads(payload: str | None, payload_file: Path | None) -> list:
    if payload is not None and payload_file is not None:
        raise CommandError("give --payload or --payload-file, not both.")
    if payload_file is not None:
        if not payload_file.is_file():
            raise CommandError(f"{payload_file}: no such file.")
        payloads = []
        for number, line in enumerate(payload_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    payloads.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CommandError(f"{payload_file}:{number}: not JSON: {exc}") from exc
        if not payloads:
            raise CommandError(f"{payload_file} holds no payload.")
        return payloads
    if payload is None:
        return [services.USE_DEFAULT]
    try:
        return [json.loads(payload)]
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not JSON: {exc}") from exc


class Command(BaseCommand):
    help = "Dispatch a trigger COUNT times (or once per line of a JSONL file) and optionally wait."

    def add_arguments(self, parser):
        parser.add_argument("trigger")
        parser.add_argument("--payload", help="JSON event (default: the trigger's default).")
        parser.add_argument("--payload-file", type=Path, help="JSONL file: one event per line.")
        parser.add_argument("--count", type=int, default=1,
                            help="Dispatch the payload(s) this many times.")
        parser.add_argument("--wait", action="store_true", help="Wait for results; summarise.")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait at most.")
        parser.add_argument("--owner", help="Username recorded as dispatcher.")

    def handle(self, *args, trigger, payload, payload_file, count, wait, timeout, owner,
               **options):
        if count < 1:
            raise CommandError("--count must be at least 1.")
        try:
            target = Trigger.objects.select_related("function__active_version").get(name=trigger)
        except Trigger.DoesNotExist:
            raise CommandError(f"no trigger named '{trigger}'.") from None
        payloads = _read_payloads(payload, payload_file) * count
        user = command_user(owner)
        ids = []
        started = time.monotonic()
        with domain_errors_as_command_errors(), tqdm(
                total=len(payloads), desc="dispatched", unit="exec",
                disable=len(payloads) == 1, file=self.stderr) as bar:
            for start in range(0, len(payloads), CHUNK):
                batch = services.execution_dispatch_many(
                    trigger=target, payloads=payloads[start:start + CHUNK], user=user)
                ids.extend(e.pk for e in batch)
                bar.update(len(batch))
        if not wait:
            if len(ids) == 1:
                self.stdout.write(Execution.objects.get(pk=ids[0]).task_id)
            else:
                self.stdout.write(f"queued {len(ids)} executions of '{target.name}'.")
            return
        done = self._wait(ids, started + timeout)
        self._summarise(ids, done, time.monotonic() - started)

    def _wait(self, ids, deadline) -> dict:
        done: dict = {}
        pending = list(ids)
        with tqdm(total=len(ids), desc="finished", unit="exec", disable=len(ids) == 1,
                  file=self.stderr) as bar:
            while pending and time.monotonic() < deadline:
                newly = {row[0]: row for row in finished_among(pending)}
                if newly:
                    done.update(newly)
                    pending = [pk for pk in pending if pk not in newly]
                    bar.update(len(newly))
                else:
                    time.sleep(0.05)
        return done

    def _summarise(self, ids, done: dict, elapsed: float) -> None:
        if len(ids) == 1 and done:
            execution = Execution.objects.get(pk=ids[0])
            self.stdout.write(f"task {execution.task_id}: {execution.status}")
            body = execution.output if execution.status == ExecutionStatus.SUCCEEDED \
                else execution.error
            self.stdout.write(json.dumps(body, indent=2, ensure_ascii=False)
                              if not isinstance(body, str) else body)
        statuses = Counter(row[1] for row in done.values())
        latencies = [(row[3] - row[2]).total_seconds() for row in done.values()]
        self.stdout.write(
            f"{len(ids)} dispatched in {elapsed:.2f} s: "
            + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
            + (f", {len(ids) - len(done)} unfinished" if len(done) < len(ids) else ""))
        self.stdout.write(
            f"retrieval time p50 {ms(percentile(latencies, 0.5))}, "
            f"p95 {ms(percentile(latencies, 0.95))}, max {ms(max(latencies, default=None))}; "
            f"throughput {len(done) / elapsed:.1f}/s")
        failed = len(ids) - statuses.get(ExecutionStatus.SUCCEEDED, 0)
        if failed:
            raise CommandError(f"{failed} of {len(ids)} executions did not succeed.")
