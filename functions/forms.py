"""Admin forms for functions: upload a source on add, a new version on change."""

from django import forms

from kubefunction.access import runtime_check
from kubefunction.errors import InvalidInput

from .models import Function, FunctionVersion, Mode, PayloadRetention, VersionStatus
from .services import retention_check
from .validation import validate_source


def _check_upload(form: forms.Form, upload, handler, mode, convention="") -> None:
    try:
        validate_source(filename=upload.name, data=upload.read(), handler=handler or None,
                        mode=mode or None, convention=convention or "")
    except InvalidInput as exc:
        form.add_error(exc.field if exc.field in form.fields else "source", exc.message)
    finally:
        upload.seek(0)


def _allowed_runtime(runtime: str, owner) -> str:
    """The operator's allow-list (KUBEFUNCTION_ALLOWED_RUNTIMES) as an error on `runtime`."""
    try:
        return runtime_check(runtime=runtime, owner=owner)
    except InvalidInput as exc:
        raise forms.ValidationError(exc.message) from exc


class FunctionAddForm(forms.ModelForm):
    source = forms.FileField(help_text="A .py file, or a .zip/.tar.gz with the code and an "
                                       "optional requirements.txt.")
    handler = forms.CharField(required=False, help_text="'module.function', or the module to run "
                                                        "in script mode. Detected when empty.")
    mode = forms.ChoiceField(choices=[("", "Detect")] + Mode.choices, required=False)
    # The admin sets this to the user adding the function, its owner-to-be.
    owner = None

    class Meta:
        model = Function
        fields = ["name", "description", "source", "convention", "handler", "mode", "runtime",
                  "timeout_seconds", "memory_mb", "network", "env_vars"]

    def clean_runtime(self):
        return _allowed_runtime(self.cleaned_data.get("runtime", ""), self.owner)

    def clean(self):
        data = super().clean()
        if data.get("source"):
            _check_upload(self, data["source"], data.get("handler"), data.get("mode"),
                          data.get("convention"))
        return data


class FunctionChangeForm(forms.ModelForm):
    new_source = forms.FileField(required=False, label="Upload a new version",
                                 help_text="Creates the next immutable version from this file.")

    class Meta:
        model = Function
        fields = ["description", "runtime", "timeout_seconds", "memory_mb", "network",
                  "max_concurrency", "payload_retention", "payload_retention_days", "env_vars",
                  "active_version", "new_source"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["active_version"]
        field.queryset = FunctionVersion.objects.filter(
            function=self.instance, status=VersionStatus.READY).order_by("-number")
        field.help_text = "Pick an earlier ready version to roll back."
        # Absent from a post: unchanged (the current policy).
        self.fields["payload_retention"].required = False

    def clean_runtime(self):
        runtime = self.cleaned_data.get("runtime", "")
        if runtime == self.instance.runtime:
            return runtime  # unchanged: dispatch refuses it if it is no longer allowed
        return _allowed_runtime(runtime, self.instance.owner)

    def clean(self):
        data = super().clean()
        if data.get("new_source"):
            _check_upload(self, data["new_source"], self.instance.handler, self.instance.mode,
                          self.instance.convention)
        if "payload_retention" in data:
            data["payload_retention"] = data["payload_retention"] or \
                self.instance.payload_retention
            if data["payload_retention"] != PayloadRetention.DAYS:
                data["payload_retention_days"] = None  # only `days` has days
            try:
                retention_check(data["payload_retention"], data.get("payload_retention_days"))
            except InvalidInput as exc:
                self.add_error(exc.field, exc.message)
        return data
