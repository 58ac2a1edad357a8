"""The payload retention task (beat: `purge-payloads`): expired payloads, old Celery results.

Imported by `ExecutionsConfig.ready()` so every worker registers it (autodiscovery only finds
`tasks.py` modules).
"""

from celery import shared_task

from . import retention


@shared_task(name="executions.purge_payloads", ignore_result=True)
def purge_payloads() -> dict[str, int]:
    """Purge the payloads past their function's retention and the old task results."""
    report = retention.retention_purge()
    return {"payloads": report.payloads, "results": report.results}
