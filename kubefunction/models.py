"""Abstract models the apps share (no table of their own)."""

from django.db import models


class NamedModel(models.Model):
    """A record people pick by its unique `name`, which each subclass declares with its own
    rules (a DNS label for a function, a URL-safe name for a trigger): listed and shown by that
    name, with when it was created and last changed."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
