"""Handler mode: called as handle(event, context) for each invocation."""


def handle(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"greeting {name}")  # goes to the execution's logs, not its output
    return {
        "message": f"Hello, {name}!",
        "function": context.function_name,
        "version": context.function_version,
        "execution_id": context.execution_id,
    }
