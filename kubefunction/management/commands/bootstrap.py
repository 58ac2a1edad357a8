"""manage.py bootstrap: the `admin` superuser and the example functions, idempotently."""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

EXAMPLES = Path(settings.BASE_DIR) / "examples" / "functions"
EXAMPLE_FUNCTIONS = [  # (function, file, trigger)
    ("hello", "hello.py", "hello"),
    ("word-count", "word_count.py", "word-count"),
    ("slugify", "slugify.zip", "slugify"),
]


class Command(BaseCommand):
    help = "Create the `admin` superuser (password from KUBEFUNCTION_ADMIN_PASSWORD or generated) "\
           "and register the example functions with triggers."

    def add_arguments(self, parser):
        parser.add_argument("--no-examples", action="store_true")

    def handle(self, *args, no_examples, **options):
        self._admin()
        if not no_examples:
            for name, filename, trigger in EXAMPLE_FUNCTIONS:
                call_command("register_function", name, str(EXAMPLES / filename),
                             trigger=trigger, owner="admin", stdout=self.stdout)

    def _admin(self) -> None:
        users = get_user_model().objects
        password = os.environ.get("KUBEFUNCTION_ADMIN_PASSWORD")
        saved = Path(settings.VAR_DIR) / "admin-password.txt"
        user = users.filter(username="admin").first()
        if user is None:
            password = password or secrets.token_urlsafe(12)
            users.create_superuser("admin", "admin@localhost", password)
            if not os.environ.get("KUBEFUNCTION_ADMIN_PASSWORD"):
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(password + "\n")
                saved.chmod(0o600)
            self.stdout.write(f"created superuser admin / {password}")
        elif password:
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write("superuser admin: password set from KUBEFUNCTION_ADMIN_PASSWORD")
        elif saved.exists():
            self.stdout.write(f"superuser admin / {saved.read_text().strip()} (from {saved})")
        else:
            self.stdout.write("superuser admin exists (password unchanged)")
