"""manage.py loadtest TRIGGER --concurrency 1,2,4,8,10: the seed's experiment, with a chart and
the Celery floor beside each level."""

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from executions.services import USE_DEFAULT
from kubefunction.commands import domain_errors_as_command_errors
from kubefunction.stats import ms
from metrics.loadtest import default_requests, run_loadtest
from triggers.models import Trigger


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--concurrency: '{text}' is not a list of integers.") from None
    if not levels or min(levels) < 1 or max(levels) > 200:
        raise CommandError("--concurrency: give levels between 1 and 200, e.g. 1,2,4,8,10.")
    return levels


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _ratio(value: float | None, floor: float | None) -> str:
    """The platform's figure over the floor's (latency: lower is better; rate: higher)."""
    return "—" if not value or not floor else f"{value / floor:.2f}"


class Command(BaseCommand):
    help = ("Dispatch TRIGGER at growing concurrency; print retrieval time (p50/p95/max) and "
            "CPU utilisation per level, write CSV + SVG under var/loadtests/, store the run.")

    def add_arguments(self, parser):
        parser.add_argument("trigger")
        parser.add_argument("--concurrency", default="1,2,4,8,10",
                            help="Comma-separated levels (default 1,2,4,8,10).")
        parser.add_argument("--requests", type=int, default=None,
                            help="Requests per level (default: ten per client, at least 50).")
        parser.add_argument("--warmup", type=int, default=None,
                            help="Warm-up requests before the levels, reported apart (default: "
                                 "the highest level's concurrency; 0 for none).")
        parser.add_argument("--no-floor", action="store_true",
                            help="Do not measure the Celery floor beside each level.")
        parser.add_argument("--payload", help="JSON event (default: the trigger's default).")
        parser.add_argument("--timeout", type=float, default=120,
                            help="Seconds one request may take before it counts as an error.")
        parser.add_argument("--out", help="Folder for the CSV and SVG (default var/loadtests).")

    def handle(self, *args, trigger, concurrency, requests, payload, timeout, out, warmup,
               no_floor, **options):
        levels = _levels(concurrency)
        if requests is not None and requests < 1:
            raise CommandError("--requests must be at least 1.")
        if warmup is not None and warmup < 0:
            raise CommandError("--warmup must be 0 or more.")
        try:
            event = USE_DEFAULT if payload is None else json.loads(payload)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from exc
        try:
            target = Trigger.objects.select_related("function__active_version").get(name=trigger)
        except Trigger.DoesNotExist:
            raise CommandError(f"no trigger named '{trigger}'.") from None
        total = sum(requests or default_requests(level) for level in levels) + (
            max(levels) if warmup is None else warmup)
        with domain_errors_as_command_errors(), tqdm(total=total, desc="requests", unit="req",
                                                      file=self.stderr) as bar:
            run = run_loadtest(trigger=target, levels=levels, requests=requests, payload=event,
                               timeout=timeout, out_dir=out, warmup=warmup,
                               floor=not no_floor, on_done=lambda: bar.update(1))
        self.stdout.write(f"load test of '{target.name}' ({run.runtime} runtime, "
                          f"{run.cpu_count} CPUs)")
        if run.warmup:
            w = run.warmup
            self.stdout.write(f"warm-up: {w['requests']} requests at concurrency "
                              f"{w['concurrency']}, {w['errors']} errors, p50 {ms(w['p50'])}, "
                              f"max {ms(w['max'])} (not in the figures below)")
        self.stdout.write(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'p50':>10} "
                          f"{'p95':>10} {'max':>10} {'CPU':>7} {'req/s':>8} "
                          f"{'floor p50':>10} {'floor p95':>10} {'floor/s':>8} {'p50 ×':>6} "
                          f"{'req/s ×':>7}")
        for lv in run.levels:
            floor_p50, floor_rate = lv.get("floor_p50"), lv.get("floor_throughput")
            self.stdout.write(
                f"{lv['concurrency']:>11} {lv['requests']:>8} {lv['errors']:>6} "
                f"{ms(lv['p50']):>10} {ms(lv['p95']):>10} {ms(lv['max']):>10} "
                f"{lv['cpu_percent']:>6.1f}% {lv['throughput']:>8.1f} "
                f"{ms(floor_p50):>10} {ms(lv.get('floor_p95')):>10} "
                f"{_number(floor_rate):>8} {_ratio(lv['p50'], floor_p50):>6} "
                f"{_ratio(lv['throughput'], floor_rate):>7}")
        self.stdout.write(f"CSV: {run.csv_path}\nchart: {run.csv_path[:-4]}.svg\n"
                          f"stored as load test run {run.pk}")
