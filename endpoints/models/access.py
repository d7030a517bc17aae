"""Who may call: service principals, access tokens and per-endpoint permissions."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from .serving import ServingEndpoint


class ServicePrincipal(models.Model):
    """A non-human identity for automation. It is a user that cannot log in to the UI
    (unusable password) so tokens and permissions treat both kinds alike."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_principal"
    )
    display_name = models.CharField(max_length=256, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return self.display_name or self.user.get_username()


TOKEN_PREFIX = "sui_"  # noqa: S105 - the public prefix of every token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def unexpired(expires_at: datetime | None) -> bool:
    """The expiry rule of tokens, for a row in hand and for one cached by a gateway."""
    return expires_at is None or expires_at > timezone.now()


class AccessTokenQuerySet(models.QuerySet):
    def active(self) -> AccessTokenQuerySet:
        """Not revoked and ``unexpired``, as a query."""
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=timezone.now())
        )


class AccessToken(models.Model):
    """A personal access token or a service principal's token. Only its SHA-256 is kept;
    ``prefix`` (the first characters) lets a user recognise it in lists and scans."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=128, blank=True, default="")
    prefix = models.CharField(max_length=16, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The token that authenticated the request creating this one: the child expires no
    # later than its parent and is revoked (or deleted) with it.
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )

    objects = AccessTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @staticmethod
    def generate() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and unexpired(self.expires_at)

    @staticmethod
    def revoke_children(token: AccessToken) -> int:
        """Revoke every unrevoked descendant of ``token`` (children of children too), at
        the parent's revocation time; the number revoked."""
        when = token.revoked_at or timezone.now()
        frontier, revoked = [token.pk], 0
        while frontier:
            frontier = list(
                AccessToken.objects.filter(
                    parent_id__in=frontier, revoked_at__isnull=True
                ).values_list("pk", flat=True)
            )
            revoked += AccessToken.objects.filter(pk__in=frontier).update(revoked_at=when)
        return revoked


class PermissionLevel(models.TextChoices):
    CAN_VIEW = "CAN_VIEW"
    CAN_QUERY = "CAN_QUERY"
    CAN_MANAGE = "CAN_MANAGE"


PERMISSION_RANK = {
    PermissionLevel.CAN_VIEW: 1,
    PermissionLevel.CAN_QUERY: 2,
    PermissionLevel.CAN_MANAGE: 3,
}


class EndpointPermission(models.Model):
    endpoint = models.ForeignKey(
        ServingEndpoint, on_delete=models.CASCADE, related_name="permissions"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="endpoint_permissions"
    )
    level = models.CharField(max_length=16, choices=PermissionLevel.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["endpoint", "user"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "user"], name="unique_endpoint_permission")
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.level} on {self.endpoint}"
