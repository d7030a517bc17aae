"""Forms of the web UI: they validate input only; the services decide what is allowed."""

from __future__ import annotations

from django import forms

from endpoints.models import (
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    PermissionLevel,
    Stage,
    WorkloadSize,
)
from endpoints.registry import ALL_STAGES

BATCHING_FIELDS = ("max_batch_size", "max_wait_ms")


class ComputeConfigForm(forms.Form):
    stage = forms.ChoiceField(choices=Stage.choices)
    workload_size = forms.ChoiceField(choices=WorkloadSize.choices)
    scale_to_zero_enabled = forms.BooleanField(required=False)
    batching_enabled = forms.BooleanField(required=False)
    # Read only with batching on: the numbers of a switched-off setting stay on the page.
    max_batch_size = forms.IntegerField(
        min_value=MAX_BATCH_SIZE_RANGE[0], max_value=MAX_BATCH_SIZE_RANGE[1], required=False
    )
    max_wait_ms = forms.IntegerField(
        min_value=MAX_WAIT_MS_RANGE[0], max_value=MAX_WAIT_MS_RANGE[1], required=False
    )

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("batching_enabled"):
            for name in BATCHING_FIELDS:
                self.errors.pop(name, None)
                data[name] = None
            return data
        for name in BATCHING_FIELDS:
            if data.get(name) is None and name not in self.errors:
                self.add_error(name, "Required with batching on.")
        return data

    def problem(self) -> str:
        """What to fix, in one sentence for the page's message."""
        for name, label in (("max_batch_size", "Max batch size"), ("max_wait_ms", "Max wait")):
            if name in self.errors:
                return f"{label}: {' '.join(self.errors[name])}"
        return "Choose a stage and a workload size."


class StageForm(forms.Form):
    stage = forms.ChoiceField(choices=Stage.choices)


class TransitionForm(forms.Form):
    version = forms.CharField(max_length=32)
    stage = forms.ChoiceField(choices=[(s, s) for s in ALL_STAGES])
    archive_existing_versions = forms.BooleanField(required=False)
    comment = forms.CharField(max_length=500, required=False)


class InvokeForm(forms.Form):
    version = forms.CharField(max_length=32)
    body = forms.CharField(required=False, strip=False)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=128, required=False)
    # A lifetime rather than a date: what people think of when they create a token.
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False)


class ServicePrincipalForm(forms.Form):
    username = forms.RegexField(
        regex=r"^[\w.@+-]+\Z",
        max_length=150,
        error_messages={"invalid": "Use letters, digits and @ . + - _ only."},
    )
    display_name = forms.CharField(max_length=256, required=False)


class PermissionForm(forms.Form):
    username = forms.CharField(max_length=150)
    # An empty level removes the user's grant.
    level = forms.ChoiceField(choices=[("", "No access"), *PermissionLevel.choices], required=False)
