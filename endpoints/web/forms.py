"""Forms of the web UI: they validate input only; the services decide what is allowed."""

from __future__ import annotations

from django import forms

from endpoints.models import (
    FRACTIONAL_FIELDS,
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    OVERRIDE_FIELDS,
    PermissionLevel,
    WorkloadSize,
    WorkloadType,
)
from endpoints.registry import ALL_STAGES
from endpoints.targets import TARGET_MAX_LENGTH, valid_alias, valid_target

BATCHING_FIELDS = ("max_batch_size", "max_wait_ms")


def _check_target(value: str) -> None:
    if not valid_target(value):
        raise forms.ValidationError("Choose a stage or a served alias.")


def target_field() -> forms.CharField:
    """A stage, or an MLflow alias written ``@<alias>``."""
    return forms.CharField(max_length=TARGET_MAX_LENGTH, validators=[_check_target])


def override_field(name: str) -> forms.Field:
    """A setting over the workload size's: empty is the size's (the services check ranges)."""
    if name in FRACTIONAL_FIELDS:
        return forms.FloatField(required=False)
    return forms.IntegerField(required=False)


class ComputeConfigForm(forms.Form):
    stage = target_field()
    workload_size = forms.ChoiceField(choices=WorkloadSize.choices)
    workload_type = forms.ChoiceField(choices=WorkloadType.choices, required=False)
    scale_to_zero_enabled = forms.BooleanField(required=False)
    cpus = override_field("cpus")
    memory_mb = override_field("memory_mb")
    max_processes = override_field("max_processes")
    tmp_mb = override_field("tmp_mb")
    gpus = override_field("gpus")
    min_replicas = override_field("min_replicas")
    max_replicas = override_field("max_replicas")
    target_concurrency = override_field("target_concurrency")
    scale_down_delay_seconds = override_field("scale_down_delay_seconds")
    scale_to_zero_delay_seconds = override_field("scale_to_zero_delay_seconds")
    batching_enabled = forms.BooleanField(required=False)
    # Read only with batching on: the numbers of a switched-off setting stay on the page.
    max_batch_size = forms.IntegerField(
        min_value=MAX_BATCH_SIZE_RANGE[0], max_value=MAX_BATCH_SIZE_RANGE[1], required=False
    )
    max_wait_ms = forms.IntegerField(
        min_value=MAX_WAIT_MS_RANGE[0], max_value=MAX_WAIT_MS_RANGE[1], required=False
    )

    def clean_workload_type(self) -> str:
        return self.cleaned_data.get("workload_type") or WorkloadType.CPU

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

    def overrides(self) -> dict[str, float | None]:
        """The limits and autoscaling settings as entered (None: the workload size's)."""
        return {name: self.cleaned_data.get(name) for name in OVERRIDE_FIELDS}

    def problem(self) -> str:
        """What to fix, in one sentence for the page's message (a setting is named as the
        API names it)."""
        labels = {"max_batch_size": "Max batch size", "max_wait_ms": "Max wait"}
        for name in (*labels, *OVERRIDE_FIELDS, "workload_type"):
            if name in self.errors:
                return f"{labels.get(name, name)}: {' '.join(self.errors[name])}"
        return "Choose a stage and a workload size."


class StageForm(forms.Form):
    stage = target_field()


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


class ModelAliasForm(forms.Form):
    alias = forms.CharField(max_length=255)
    # Empty: remove the alias.
    version = forms.RegexField(regex=r"^[0-9]{1,18}$", required=False)

    def clean_alias(self) -> str:
        alias = self.cleaned_data["alias"].strip().removeprefix("@")
        if not valid_alias(alias):
            raise forms.ValidationError("Not a valid alias name.")
        return alias


class ServedAliasesForm(forms.Form):
    mode = forms.ChoiceField(choices=[("all", "Every alias"), ("some", "Only these")])
    aliases = forms.MultipleChoiceField(required=False, choices=())
    # Another alias to serve, typed in (one the model may not have yet).
    extra = forms.CharField(max_length=255, required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        picked = self.data.getlist("aliases") if hasattr(self.data, "getlist") else []
        self.fields["aliases"].choices = [(a, a) for a in picked]

    def clean(self) -> dict:
        data = super().clean()
        chosen = list(data.get("aliases") or [])
        extra = (data.get("extra") or "").strip().removeprefix("@")
        if extra:
            if not valid_alias(extra):
                raise forms.ValidationError("Not a valid alias name.")
            chosen.append(extra)
        data["aliases"] = chosen
        return data


class TrafficSplitForm(forms.Form):
    """A target's weights (``weight_<version>`` fields) and what to do with them."""

    target = target_field()
    action = forms.RegexField(regex=r"^(split|rollback|promote-[0-9]{1,18})$")

    def clean(self) -> dict:
        data = super().clean()
        weights = {}
        for key, value in self.data.items():
            version = key.removeprefix("weight_")
            if key.startswith("weight_") and version.isdigit():
                if not value.strip().isdigit() or int(value) > 100:
                    raise forms.ValidationError(f"Version {version}: a percent from 0 to 100.")
                weights[version] = int(value)
        data["weights"] = weights
        return data

    def problem(self) -> str:
        errors = self.non_field_errors()
        return errors[0] if errors else "Choose a stage or alias and what to do."


class InferenceTableForm(forms.Form):
    enabled = forms.BooleanField(required=False)
    sample_percent = forms.FloatField(min_value=0.01, max_value=100, required=False)

    def clean_sample_percent(self) -> float:
        value = self.cleaned_data.get("sample_percent")
        return 100.0 if value is None else value
