"""`.env.example` documents every variable the settings and scripts read."""

import re

from tests.conftest import ROOT


def test_env_example_lists_every_variable():
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    settings_text = (ROOT / "kubefunction" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', settings_text))
    scripts = (ROOT / "scripts" / "env.sh").read_text() + (ROOT / "Procfile").read_text()
    read |= set(re.findall(r"\$\{([A-Z_]+)", scripts))
    read |= {"KUBEFUNCTION_ADMIN_PASSWORD"}
    assert read - documented == set()
