"""``manage.py create_token USERNAME [--name NAME]``: print a new token and nothing else."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from endpoints import services


class Command(BaseCommand):
    help = "Create an access token for a user or service principal and print it (shown once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the token by.")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after N days.")

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=options["username"])
        except User.DoesNotExist:
            raise CommandError(f"No user named '{options['username']}'.") from None
        days = options["expires_days"]
        expires_at = timezone.now() + timedelta(days=days) if days else None
        _, plaintext = services.token_create(
            user=user, name=str(options["name"] or "command line"), expires_at=expires_at
        )
        self.stdout.write(plaintext)
