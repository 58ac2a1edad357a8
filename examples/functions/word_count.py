"""Script mode (the seed's style): a plain script; whatever it prints is the result.

The event arrives as JSON on standard input.
"""

import json
import sys

event = json.load(sys.stdin)
text = event.get("text", "") if isinstance(event, dict) else str(event)
words = text.split()
print("counting", len(words), "words", file=sys.stderr)  # standard error becomes the logs
print(json.dumps({"words": len(words), "characters": len(text)}))
