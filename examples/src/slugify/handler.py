"""Handler mode with a dependency from requirements.txt (installed when the version is built)."""

from slugify import slugify


def handle(event):
    text = event.get("text", "") if isinstance(event, dict) else str(event)
    return {"slug": slugify(text)}
