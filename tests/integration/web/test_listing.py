"""The models list at scale: a page at a time from the registry, searched by name, paged
with MLflow's page tokens, filtered to models whose serving is enabled.

The big registry is a registry of its own (an MLflow SQLite database made once for the
module), filled through MLflow's own ORM in one transaction: creating 1,050 models through
the client takes ~30 ms each (half a minute), the bulk insert well under a second. The demo
registry the other tests share is left alone.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from html import unescape
from urllib.parse import unquote

import pytest
from django.test import Client

from endpoints import registry, services
from endpoints.web import listing

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

BULK = 1_050  # more than the 1,000 the list used to stop at


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _use(settings, uri: str) -> None:
    settings.MLFLOW_TRACKING_URI = settings.MLFLOW_REGISTRY_URI = uri


def _fill(names: list[str]) -> None:
    """``names`` as registered models in one transaction, plus two real ones with versions."""
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModel

    store = registry.client()._get_registry_client().store
    with store.ManagedSessionMaker(read_only=False) as session:
        session.add_all(
            SqlRegisteredModel(name=name, creation_time=1, last_updated_time=1) for name in names
        )
    client = registry.client()
    for name in ("Zeta-model", "alpha-model"):
        client.create_registered_model(name, description=f"{name} for the list")
        for stage in ("Production", "Staging"):
            version = client.create_model_version(name, source="/tmp/nowhere")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                client.transition_model_version_stage(name, version.version, stage)


@pytest.fixture(scope="module")
def registries(tmp_path_factory) -> dict[str, object]:
    """Two registries made once for the module (creating MLflow's tables takes seconds):
    an empty one, and one with ``BULK`` models named bulk-00000 … bulk-01049 plus two real
    ones with versions."""
    from django.test import override_settings

    root = tmp_path_factory.mktemp("registries")
    uris = {kind: f"sqlite:///{root / kind}.db" for kind in ("empty", "big")}
    names = [f"bulk-{i:05d}" for i in range(BULK)]
    for kind, uri in uris.items():
        with override_settings(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                registry.search_models(max_results=1)  # creates MLflow's tables
            if kind == "big":
                _fill(names)
    # MLflow orders by name as the database compares them: capitals first.
    return {**uris, "names": sorted([*names, "Zeta-model", "alpha-model"])}


@pytest.fixture
def own_registry(settings, registries) -> None:
    """An empty registry of the test's own (a test that adds a model deletes it)."""
    _use(settings, registries["empty"])


@pytest.fixture
def big_registry(settings, registries) -> list[str]:
    """The big registry; every name, in the list's order."""
    _use(settings, registries["big"])
    return registries["names"]


def names_on(html: str) -> list[str]:
    found = re.findall(r'<td><a href="/models/([^/"]+)/">', html)
    return [unquote(unescape(n)) for n in found]


def link(html: str, rel: str) -> str | None:
    match = re.search(rf'<a href="(\?[^"]*)"[^>]*rel="{rel}"', html)
    return unescape(match.group(1)) if match else None


def test_search_finds_the_last_of_more_than_a_thousand_models(member, big_registry):
    client = logged_in(member)
    html = client.get("/", {"q": "bulk-01049"}).content.decode()
    assert names_on(html) == ["bulk-01049"]
    # Any part of the name, in any case.
    assert names_on(client.get("/", {"q": "K-0104"}).content.decode()) == [
        f"bulk-0104{i}" for i in range(10)
    ]


def test_paging_reaches_the_last_of_more_than_a_thousand_models(member, big_registry):
    client = logged_in(member)
    html = client.get("/").content.decode()
    assert link(html, "prev") is None
    seen, pages = names_on(html), [html]
    while (following := link(html, "next")) is not None:
        html = client.get("/" + following).content.decode()
        pages.append(html)
        seen += names_on(html)
    assert seen == big_registry
    assert len(pages) == -(-len(big_registry) // listing.PAGE_SIZE)
    assert all(len(names_on(p)) == listing.PAGE_SIZE for p in pages[:-1])
    assert names_on(pages[-1])[-1] == big_registry[-1] == "bulk-01049"
    # Previous goes back one page at a time, to the first.
    html = pages[-1]
    for expected in reversed(pages[:-1]):
        html = client.get("/" + link(html, "prev")).content.decode()
        assert names_on(html) == names_on(expected)
    assert link(html, "prev") is None


def test_a_row_shows_the_latest_versions_and_the_description(member, big_registry):
    html = logged_in(member).get("/", {"q": "alpha"}).content.decode()
    assert names_on(html) == ["alpha-model"]
    assert "v1 · Production" in html and "v2 · Staging" in html
    assert "alpha-model for the list" in html


def test_the_serving_filter_shows_only_enabled_endpoints(owner, big_registry):
    services.endpoint_enable(name="bulk-00700", user=owner)
    services.endpoint_enable(name="alpha-model", user=owner)
    client = logged_in(owner)
    html = client.get("/", {"serving": "on"}).content.decode()
    assert names_on(html) == ["alpha-model", "bulk-00700"]
    assert 'id="serving-only" name="serving" value="on" checked' in html
    html = client.get("/", {"serving": "on", "q": "bulk"}).content.decode()
    assert names_on(html) == ["bulk-00700"]
    html = client.get("/", {"serving": "on", "q": "bulk-00701"}).content.decode()
    assert names_on(html) == []
    assert "No model with serving enabled has “bulk-00701” in its name." in html


def test_the_serving_filter_with_nothing_enabled_says_how_to_enable(member, own_registry):
    html = logged_in(member).get("/", {"serving": "on"}).content.decode()
    assert "No model has serving enabled yet." in html


def test_a_search_without_matches_says_so_and_offers_the_whole_list(member, big_registry):
    html = logged_in(member).get("/", {"q": "no-such-model"}).content.decode()
    assert names_on(html) == []
    assert "No model has “no-such-model” in its name." in html
    assert '<a href="/">Show all models</a>' in html
    assert 'value="no-such-model"' in html


def test_an_empty_registry_explains_how_to_register_a_model(member, own_registry):
    html = logged_in(member).get("/").content.decode()
    assert "No registered models yet." in html


def test_htmx_gets_only_the_results(member, big_registry):
    response = logged_in(member).get("/", {"q": "bulk-0000"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="models-results"')
    assert 'role="search"' not in html and "<html" not in html
    assert names_on(html) == [f"bulk-0000{i}" for i in range(10)]


def test_the_search_box_drives_the_results_with_htmx(member, own_registry):
    html = logged_in(member).get("/").content.decode()
    start = html.index('role="search"')
    form = html[start : html.index("</form>", start)]
    assert 'hx-get="/"' in form and 'hx-target="#models-results"' in form
    assert 'hx-push-url="true"' in form
    assert 'type="search" id="model-search" name="q"' in form


def test_a_stale_page_token_starts_again_at_the_first_page(member, big_registry):
    html = logged_in(member).get("/", {"page_token": "not-a-token"}).content.decode()
    assert names_on(html) == big_registry[: listing.PAGE_SIZE]


@pytest.fixture
def quoted_names(own_registry) -> Iterator[list[str]]:
    names = ["o'brien", 'it\'s-a-"model"']
    for name in names:
        registry.client().create_registered_model(name)
    yield names
    for name in names:
        registry.client().delete_registered_model(name)


def test_a_quote_in_the_search_is_just_a_character(member, quoted_names):
    html = logged_in(member).get("/", {"q": "o'b"}).content.decode()
    assert names_on(html) == ["o'brien"]
    # A filter literal cannot hold both quotes: the search still answers.
    html = logged_in(member).get("/", {"q": "t's-a-\"m"}).content.decode()
    assert names_on(html) == ['it\'s-a-"model"']
