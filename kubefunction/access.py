"""Who may see what: non-staff users see only what they own; staff see everything."""

from django.db.models import QuerySet


def scope_to_owner(queryset: QuerySet, user, owner_path: str) -> QuerySet:
    """Filter `queryset` to rows whose `owner_path` is `user`, unless the user is staff."""
    if getattr(user, "is_staff", False):
        return queryset
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    return queryset.filter(**{owner_path: user})
