"""What the console's pages show, worked out without a page: the events-per-hour chart,
the events page's filters, secrets masked, and the session cookie's signature."""

from __future__ import annotations

from pydantic import SecretStr

from app.console.session import SessionSigner
from app.console.views import CHART_HEIGHT, EventFilter, hourly_chart, iso
from app.masking import MASK, Masker
from app.server.limits import RateLimiter
from app.service import configured_secrets
from app.storage.records import EventState
from tests.support.inprocess import SettingsFactory
from tests.support.tokens import ADMIN_TOKEN, TOKEN

HOUR = 3600.0
NOON = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 12 * HOUR  # noon, UTC


def test_the_chart_has_a_bar_per_clock_hour_stacked_by_state() -> None:
    now = NOON + 30 * 60  # half past: the current hour is the last bar
    counts = [  # as History.outcomes_by_hour gives them: (the hour, state, events)
        (NOON - 2 * HOUR, EventState.DELIVERED, 1),
        (NOON, EventState.DELIVERED, 2),
        (NOON, EventState.DEAD, 1),
        (NOON - 30 * HOUR, EventState.DEAD, 1),  # before the window: not drawn
    ]

    chart = hourly_chart(counts, since=now - 24 * HOUR, now=now)

    assert len(chart.bars) == 25  # the hour the window starts in, to the current one
    assert chart.peak == 3
    last = chart.bars[-1]
    assert [(s.state, s.count) for s in last.segments] == [
        (EventState.DELIVERED, 2),
        (EventState.DEAD, 1),
    ]
    assert last.segments[0].y + last.segments[0].height == CHART_HEIGHT  # from the base
    assert last.segments[1].y == 0  # the tallest bar reaches the top
    assert chart.bars[-3].total == 1
    assert sum(bar.total for bar in chart.bars) == 4
    assert "2 delivered, 1 dead" in last.title
    assert [bar.label for bar in chart.bars if bar.label] == [
        "12:00",
        "18:00",
        "00:00",
        "06:00",
        "12:00",
    ]


def test_an_empty_day_draws_empty_bars() -> None:
    chart = hourly_chart([], since=NOON - 24 * HOUR, now=NOON)

    assert chart.peak == 0
    assert all(bar.segments == [] for bar in chart.bars)


def test_the_filter_reads_a_form_and_names_what_it_cannot() -> None:
    wanted = EventFilter.of(
        {"state": "dead", "table": " orders ", "q": "ab12", "since": "2026-11-30T06:00"}
    )
    refused = EventFilter.of({"state": "lost", "until": "soon", "cursor": "1.5_zz"})

    assert wanted.errors == []
    assert (wanted.state, wanted.table, wanted.text) == (EventState.DEAD, "orders", "ab12")
    assert wanted.since is not None
    assert iso(wanted.since) == "2026-11-30T06:00:00Z"  # no offset: UTC
    assert (
        wanted.query(cursor="c")
        == "state=dead&table=orders&q=ab12&since=2026-11-30T06%3A00&cursor=c"
    )
    assert [error.split(":")[0] for error in refused.errors] == ["state", "until", "cursor"]


def test_text_shown_has_every_configured_secret_masked(make_settings: SettingsFactory) -> None:
    masked = Masker(configured_secrets(make_settings(admin_token=ADMIN_TOKEN))).mask

    shown = masked(f'echoed: Bearer {TOKEN} and "{ADMIN_TOKEN}"')

    assert TOKEN not in shown
    assert ADMIN_TOKEN not in shown
    assert shown == f'echoed: Bearer {MASK} and "{MASK}"'
    assert masked(None) == ""


def test_a_session_cookie_changed_anywhere_is_not_read() -> None:
    signer = SessionSigner(SecretStr(ADMIN_TOKEN), lifetime=60)
    session, cookie = signer.issue(now=1000)
    expires, session_id, signature = cookie.split(".")

    assert signer.read(cookie, now=1000) == session
    assert signer.read(cookie, now=1060) is None  # expired
    for changed in (
        f"{int(expires) + 3600}.{session_id}.{signature}",
        f"{expires}.{'0' * 32}.{signature}",
        f"{expires}.{session_id}.{signature[:-1]}{'B' if signature.endswith('A') else 'A'}",
        f"{expires}.{session_id}",
        "",
        "1.2.\u00e9",  # non-ASCII: not signed in, not an error
        f"{expires}.{session_id}.{signature[:-1]}\u00e9",
        f"{expires}.{session_id}.{signature}\udc80",  # a lone surrogate
    ):
        assert signer.read(changed, now=1000) is None, changed
    assert signer.csrf_valid(session, signer.csrf_token(session))
    other, _ = signer.issue(now=1000)
    assert not signer.csrf_valid(other, signer.csrf_token(session))


def test_the_sign_in_throttle_remembers_a_bounded_number_of_clients() -> None:
    throttle = RateLimiter(rate=1e-9, burst=1, max_keys=2)  # no refill within the test

    first_try = throttle.retry_after("198.51.100.1")
    throttle.retry_after("198.51.100.2")
    throttled = throttle.exhausted("198.51.100.1")
    throttle.retry_after("198.51.100.3")  # a third client: the least recent is forgotten
    throttle.retry_after("198.51.100.4")

    assert first_try is None
    assert throttled
    assert not throttle.exhausted("198.51.100.1")  # forgotten: a full allowance again
    assert throttle.exhausted("198.51.100.4")
