"""Handler mode: does what its event asks — for generating realistic executions
(`manage.py generate_executions`).

Event: {"sleep": seconds, "cpu": seconds of busy work, "fail": "message", "exit": code}.
"""

import time


def handle(event, context):
    event = event if isinstance(event, dict) else {}
    if event.get("exit"):
        raise SystemExit(int(event["exit"]))  # the runtime retires the process: next call is cold
    busy_until = time.perf_counter() + float(event.get("cpu", 0))
    while time.perf_counter() < busy_until:
        pass
    time.sleep(float(event.get("sleep", 0)))
    if event.get("fail"):
        raise ValueError(event["fail"])
    return {"ok": True, "slept": event.get("sleep", 0), "execution": context.execution_id}
