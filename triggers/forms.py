"""The admin's dispatch form: a JSON payload and how many executions to queue."""

import json

from django import forms
from django.conf import settings


class DispatchForm(forms.Form):
    payload = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField"}),
        required=False,
        help_text="JSON event for the function. Empty sends the trigger's default payload.")
    count = forms.IntegerField(min_value=1, max_value=settings.KUBEFUNCTION_MAX_BATCH, initial=1,
                               help_text="How many executions to queue with this payload.")

    def clean_payload(self):
        text = self.cleaned_data["payload"].strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
