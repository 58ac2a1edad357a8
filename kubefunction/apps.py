from django.apps import AppConfig


class KubefunctionConfig(AppConfig):
    name = "kubefunction"
    verbose_name = "KubeFunction"
