"""The one shape of the runtime benchmark commands (`bench_docker`, `bench_kube`): floor and cold
runs alternating (`--samples`), then warm invocations (`--warm`), printed as a table of times
and their ratios to the floor, then what the figures mean, then where they were saved."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand

from kubefunction.stats import floor_table, save_report


class RuntimeBenchCommand(BaseCommand):
    """A subclass says what it measures (`measure`), its table's rows (`rows`), the lines after
    it (`notes`) and the name its figures are saved under (`report`)."""

    report = ""
    samples = 10

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=self.samples,
                            help="Floor and cold runs, alternating (medians are shown).")
        parser.add_argument("--warm", type=int, default=200, help="Warm invocations.")

    def measure(self, *, samples: int, warm: int) -> Any:
        raise NotImplementedError

    def rows(self, figures: Any) -> list[tuple[str, float | None]]:
        raise NotImplementedError

    def notes(self, figures: Any) -> Iterable[str]:
        return ()

    def handle(self, *args, samples, warm, **options):
        figures = self.measure(samples=samples, warm=warm)
        for line in floor_table(self.rows(figures), figures.floor):
            self.stdout.write(line)
        for line in self.notes(figures):
            self.stdout.write(line)
        self.stdout.write(f"figures saved to {save_report(self.report, asdict(figures))}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"
