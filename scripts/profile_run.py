"""Profile one invocation's platform work in one process (no broker hop): dispatch, then run.

    .venv/bin/python manage.py shell < scripts/profile_run.py

300 dispatch + `execution_run` calls of the bench's trivial function on the warm local runtime
(after 30 to warm up), timed, then profiled with cProfile (top 28 by cumulative time). The README's
"Measured" section quotes it.
"""

import cProfile
import io
import pstats
import time

from executions import services
from executions.workers import worker_id
from metrics.bench import _bench_trigger

trigger = _bench_trigger("local")
worker = worker_id("profile@here")


def one() -> None:
    execution = services.execution_dispatch(trigger=trigger, payload=1)
    services.execution_run(execution_id=str(execution.pk), worker=worker)


for _ in range(30):
    one()
started = time.perf_counter()
for _ in range(300):
    one()
print(f"per invocation (dispatch + run in one process): "
      f"{(time.perf_counter() - started) / 300 * 1000:.2f} ms")
profile = cProfile.Profile()
profile.enable()
for _ in range(300):
    one()
profile.disable()
out = io.StringIO()
pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(28)
print(out.getvalue())
