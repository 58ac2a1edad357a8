"""Triggers: a unique name mapped to a function."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

TRIGGER_NAME = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
    "Use letters, digits, '-', '_' and '.', starting with a letter or digit (at most 100).",
)


class TriggerKind(models.TextChoices):
    MANUAL = "manual", "Manual (API, admin, command)"


class Trigger(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[TRIGGER_NAME],
                            help_text="Unique name used to dispatch, e.g. in URLs and commands.")
    function = models.ForeignKey("functions.Function", on_delete=models.CASCADE,
                                 related_name="triggers", help_text="The function it runs.")
    kind = models.CharField(max_length=16, choices=TriggerKind.choices,
                            default=TriggerKind.MANUAL, help_text="What fires the trigger.")
    enabled = models.BooleanField(default=True,
                                  help_text="A disabled trigger refuses dispatches.")
    default_payload = models.JSONField(default=dict, blank=True,
                                       help_text="The event sent when a dispatch gives none.")
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
