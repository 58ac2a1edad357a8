"""Real executions for the dashboards: demo functions dispatched through the platform's own
dispatch path (`execution_dispatch_many`) and run by whatever workers serve the queue.

Each demo function runs `examples/functions/workload.py`, whose event says how long to sleep,
how much CPU to burn, and whether to fail, exit (the runtime then retires the process, so the
next invocation starts cold) or outlive the function's 1-second timeout.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from executions.services import execution_dispatch_many
from executions.waiters import wait_many
from functions.models import Function
from functions.services import function_register
from triggers.models import Trigger
from triggers.services import trigger_create

SOURCE = settings.BASE_DIR / "examples" / "functions" / "workload.py"
TIMEOUT_SECONDS = 1
CHUNK = 500


@dataclass(frozen=True)
class Profile:
    """How one demo function behaves: a share of the invocations, its typical run time, and how
    often it fails, exits (a cold start follows) or times out."""

    name: str
    weight: float
    sleep: float  # median seconds
    cpu: float
    fail: float
    exit: float
    timeout: float


PROFILES = (
    Profile("demo-thumbnail", 0.45, 0.040, 0.010, 0.03, 0.02, 0.004),
    Profile("demo-mailer", 0.35, 0.010, 0.002, 0.08, 0.01, 0.002),
    Profile("demo-report", 0.20, 0.150, 0.030, 0.02, 0.04, 0.01),
)


def profiles(count: int) -> list[Profile]:
    """`count` profiles: the three above, then variations named demo-fn-4, demo-fn-5, …"""
    out = list(PROFILES[:count])
    for number in range(len(out) + 1, count + 1):
        base = PROFILES[number % len(PROFILES)]
        out.append(Profile(f"demo-fn-{number}", base.weight / 2, base.sleep * (1 + number / 10),
                           base.cpu, base.fail, base.exit, base.timeout))
    return out


def demo_trigger(profile: Profile, *, owner, runtime: str = "") -> Trigger:
    """The profile's function and trigger (both named after it), registered the first time."""
    function = Function.objects.filter(name=profile.name).first()
    if function is None:
        function = function_register(name=profile.name, owner=owner, filename="workload.py",
                                     data=SOURCE.read_bytes(), timeout_seconds=TIMEOUT_SECONDS,
                                     runtime=runtime,
                                     description="Demo workload (generate_executions).").function
    return Trigger.objects.filter(name=profile.name).first() or trigger_create(
        name=profile.name, function=function, user=owner)


def payload(profile: Profile, rng: random.Random) -> dict:
    draw = rng.random()
    if draw < profile.timeout:
        return {"sleep": TIMEOUT_SECONDS + 0.5}
    draw -= profile.timeout
    if draw < profile.exit:
        return {"exit": 3}
    event = {"sleep": round(rng.lognormvariate(0, 0.6) * profile.sleep, 4), "cpu": profile.cpu}
    if draw - profile.exit < profile.fail:
        event["fail"] = "asked to fail"
    return event


def generate_executions(*, functions: int = 3, count: int = 3000, owner, runtime: str = "",
                        seed: int = 1, on_dispatched: Callable[[int], None] | None = None
                        ) -> list:
    """Dispatch `count` executions across `functions` demo functions, interleaved in chunks;
    returns their ids."""
    rng = random.Random(seed)
    chosen = profiles(functions)
    triggers = [demo_trigger(p, owner=owner, runtime=runtime) for p in chosen]
    weights = [p.weight for p in chosen]
    picks = rng.choices(range(len(chosen)), weights=weights, k=count)
    ids: list = []
    for start in range(0, count, CHUNK):
        with transaction.atomic():
            for index, (profile, trigger) in enumerate(zip(chosen, triggers, strict=True)):
                share = [payload(profile, rng) for pick in picks[start:start + CHUNK]
                         if pick == index]
                if share:
                    executions = execution_dispatch_many(trigger=trigger, payloads=share,
                                                         user=owner, source="command")
                    ids.extend(e.pk for e in executions)
        if on_dispatched:
            on_dispatched(min(CHUNK, count - start))
    return ids


def wait_finished(ids: Sequence, *, timeout: float,
                  on_progress: Callable[[int], None] | None = None) -> int:
    """Wait until the executions finish or `timeout` seconds pass; returns how many finished."""
    return len(wait_many(ids=ids, timeout=timeout, on_progress=on_progress))
