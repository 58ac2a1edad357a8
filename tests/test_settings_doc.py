"""`.env.example` documents every variable the settings and scripts read."""

import re

from tests.conftest import ROOT


def test_env_example_lists_every_variable():
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    settings_text = (ROOT / "kubefunction" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', settings_text))
    # The database and broker choice (settings call it) reads its knobs itself.
    choice_text = (ROOT / "kubefunction" / "state_backends.py").read_text()
    read |= set(re.findall(r'environ\.get\("([A-Z_]+)"', choice_text))
    read |= set(re.findall(r'"(KUBEFUNCTION_[A-Z_]+|DATABASE_URL|CELERY_BROKER_URL)"', choice_text))
    scripts = (ROOT / "scripts" / "env.sh").read_text() + (ROOT / "Procfile").read_text()
    read |= set(re.findall(r"\$\{([A-Z_]+)", scripts))
    read |= {"KUBEFUNCTION_ADMIN_PASSWORD"}
    assert read - documented == set()
