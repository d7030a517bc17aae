from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from endpoints.auth import token_for


@pytest.mark.django_db
def test_create_token_prints_only_a_working_token(admin_user):
    out = StringIO()
    call_command("create_token", "root", "--name", "laptop", stdout=out)
    printed = out.getvalue().strip()
    assert "\n" not in printed
    token = token_for(printed)
    assert token is not None and token.user == admin_user and token.name == "laptop"


@pytest.mark.django_db
def test_create_token_for_unknown_user_fails():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_token", "nobody")
