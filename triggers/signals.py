"""Keep django-celery-beat's table in step when triggers are deleted, however that happens
(the API, the admin's bulk delete, or a cascade from a deleted function)."""

from django.db.models.signals import post_delete
from django.dispatch import receiver
from django_celery_beat.models import PeriodicTask

from .models import Trigger
from .services import crontab_drop_if_unused


@receiver(post_delete, sender=Trigger, dispatch_uid="triggers.delete_periodic_task")
def delete_periodic_task(sender, instance: Trigger, **kwargs) -> None:
    """A deleted schedule trigger fires nothing more: its PeriodicTask goes with it."""
    if instance.periodic_task_id:
        task = PeriodicTask.objects.filter(pk=instance.periodic_task_id).first()
        if task is not None:
            task.delete()
            crontab_drop_if_unused(task.crontab_id)
