"""manage.py bootstrap: the `admin` superuser, the example functions and an HTTP trigger for
`hello` (its token saved under var/ and printed with a curl line), idempotently."""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from functions.models import Function
from triggers.models import Trigger, TriggerKind
from triggers.services import token_matches, trigger_create, webhook_url

EXAMPLES = Path(settings.BASE_DIR) / "examples" / "functions"
EXAMPLE_FUNCTIONS = [  # (function, file, trigger)
    ("hello", "hello.py", "hello"),
    ("word-count", "word_count.py", "word-count"),
    ("slugify", "slugify.zip", "slugify"),
]
HELLO_WEBHOOK = "hello-http"  # the HTTP trigger of `hello` (README: "Call a function over HTTP")


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
            self._hello_webhook()

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

    def _hello_webhook(self) -> None:
        """An HTTP trigger for `hello`. Its token is saved (0600) in var/hello-http-token.txt,
        since only its hash is stored, so every run can print a curl line that works."""
        saved = Path(settings.VAR_DIR) / f"{HELLO_WEBHOOK}-token.txt"
        trigger = Trigger.objects.filter(name=HELLO_WEBHOOK).first()
        if trigger is None:
            trigger = trigger_create(name=HELLO_WEBHOOK, function=Function.objects.get(
                name="hello"), user=get_user_model().objects.get(username="admin"),
                kind=TriggerKind.HTTP, description="The hello example over HTTP (bootstrap).")
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.touch(mode=0o600)
            saved.chmod(0o600)
            saved.write_text(trigger.token + "\n")
        token = saved.read_text().strip() if saved.exists() else ""
        url = webhook_url(trigger)
        if not token_matches(trigger, token):
            self.stdout.write(f"HTTP trigger {HELLO_WEBHOOK}: POST {url} (its token was "
                              f"regenerated since {saved} was written: use the new one)")
            return
        self.stdout.write(f"HTTP trigger {HELLO_WEBHOOK}: token {token} (also in {saved})")
        self.stdout.write(f"  try: curl -X POST {url} -H 'X-KubeFunction-Token: {token}' "
                          "-d '{\"x\": 1}'")
