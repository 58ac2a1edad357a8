"""manage.py generate_executions: real executions across demo functions, for the dashboards."""

from collections import Counter

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from executions.models import Execution
from kubefunction.commands import command_user, domain_errors_as_command_errors
from metrics.generate import generate_executions, wait_finished


class Command(BaseCommand):
    help = ("Dispatch --count executions across --functions demo functions (registered from "
            "examples/functions/workload.py the first time) through the real dispatch path: "
            "some succeed, some fail, some time out, cold and warm. Waits for a worker to run "
            "them unless --no-wait.")

    def add_arguments(self, parser):
        parser.add_argument("--functions", type=int, default=3)
        parser.add_argument("--count", type=int, default=3000)
        parser.add_argument("--runtime", default="",
                            help="Runtime of newly registered demo functions (default: the "
                                 "platform's). Container runtimes need the image built first.")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--timeout", type=float, default=900,
                            help="Seconds to wait for the executions at most.")
        parser.add_argument("--no-wait", action="store_true")
        parser.add_argument("--owner", help="Username that owns the demo functions.")

    def handle(self, *args, functions, count, runtime, seed, timeout, no_wait, owner,
               **options):
        if not 1 <= functions <= 50:
            raise CommandError("--functions must be between 1 and 50.")
        if count < 1:
            raise CommandError("--count must be at least 1.")
        user = command_user(owner)
        with domain_errors_as_command_errors(), \
                tqdm(total=count, desc="dispatched", unit="exec", file=self.stderr) as bar:
            ids = generate_executions(functions=functions, count=count, owner=user,
                                      runtime=runtime, seed=seed, on_dispatched=bar.update)
        if no_wait:
            self.stdout.write(f"queued {len(ids)} executions.")
            return
        with tqdm(total=len(ids), desc="finished", unit="exec", file=self.stderr) as bar:
            done = wait_finished(ids, timeout=timeout, on_progress=bar.update)
        rows = Execution.objects.filter(pk__in=ids)
        statuses = Counter(rows.values_list("status", flat=True))
        cold = rows.filter(cold=True).count()
        self.stdout.write(f"{done} of {len(ids)} finished: "
                          + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
                          + f"; {cold} cold starts.")
        if done < len(ids):
            raise CommandError(f"{len(ids) - done} executions did not finish within {timeout:g} "
                               "s: is a worker running on this queue?")
