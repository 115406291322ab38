"""A small synthetic conversation for ``engram demo``: three tenants, several sessions over four weeks.

Some facts come back in later sessions (Maya's dog Biscuit, her vegetarian diet, Leo's Spanish lessons), and some
change (Maya moves from Portland to Denver; the Harbor Bikes customer upgrades from the Basic to the Pro plan), so
that consolidation has repeats to merge and facts to supersede. Two extra rows are wrong on purpose and end up in
quarantine. Every row carries a fixed event id, so loading the demo twice stores each turn once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

TURN_SPACING = timedelta(minutes=2)


@dataclass(frozen=True)
class DemoSession:
    """One conversation session: who spoke, what they said, in order, from ``start``."""

    tenant: str
    session: str
    start: datetime
    turns: tuple[tuple[str, str], ...]


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


SESSIONS: tuple[DemoSession, ...] = (
    DemoSession(
        "maya",
        "maya-s1",
        _at(4, 18, 5),
        (
            ("Maya", "Hi! I'm Maya. I live in Portland and I work as a nurse at St. Vincent hospital."),
            ("Assistant", "Nice to meet you, Maya. How can I help today?"),
            ("Maya", "I'm vegetarian, so I need dinner ideas without meat for the week."),
            ("Assistant", "How about a lentil curry, a mushroom risotto and black bean tacos?"),
            ("Maya", "Perfect. My dog Biscuit needs a long walk first, he's a golden retriever."),
            ("Assistant", "Enjoy the walk with Biscuit. I'll keep the vegetarian recipes for later."),
        ),
    ),
    DemoSession(
        "maya",
        "maya-s2",
        _at(9, 9, 30),
        (
            ("Maya", "I signed up for the Portland half marathon in June."),
            ("Assistant", "Great goal! How many days a week can you run?"),
            ("Maya", "Three days, around my night shifts at the hospital."),
            ("Assistant", "Then a 12-week plan with one long run on your day off fits well."),
            ("Maya", "Biscuit will join the short runs, he loves the park."),
            ("Assistant", "Bring water for Biscuit on warm days."),
        ),
    ),
    DemoSession(
        "maya",
        "maya-s3",
        _at(18, 20, 15),
        (
            ("Maya", "Big news: I got a job offer at a hospital in Denver."),
            ("Assistant", "Congratulations! Are you going to take it?"),
            ("Maya", "Yes, I'm moving to Denver at the end of the month."),
            ("Assistant", "Do you need help with a moving checklist?"),
            ("Maya", "Please. Also find vegetarian restaurants near Capitol Hill in Denver."),
            ("Assistant", "Here is a checklist, and three vegetarian places near Capitol Hill."),
        ),
    ),
    DemoSession(
        "maya",
        "maya-s4",
        _at(30, 11, 0),
        (
            ("Maya", "I live in Denver now, the move went fine."),
            ("Assistant", "Glad to hear it. How is Biscuit settling in?"),
            ("Maya", "Biscuit loves the new yard. I still need a vet for him in Denver."),
            ("Assistant", "There are two well-reviewed vets within a mile of Capitol Hill."),
            ("Maya", "I'll still run the half marathon in June, I'll fly back to Portland for it."),
            ("Assistant", "Noted: the June half marathon in Portland stays on the plan."),
        ),
    ),
    DemoSession(
        "leo",
        "leo-s1",
        _at(5, 7, 45),
        (
            ("Leo", "Good morning. I'm learning Spanish, can you quiz me on verbs?"),
            ("Assistant", "Of course. What is the past tense of 'tener' for 'yo'?"),
            ("Leo", "Tuve. My daughter Ava is learning Spanish at school too."),
            ("Assistant", "Correct! You and Ava could practise together."),
            ("Leo", "Good idea. Note that I'm allergic to peanuts, in case you suggest snacks for us."),
            ("Assistant", "Noted: no peanuts. Try apple slices with cheese for a study snack."),
        ),
    ),
    DemoSession(
        "leo",
        "leo-s2",
        _at(12, 7, 50),
        (
            ("Leo", "Another Spanish quiz please, irregular verbs this time."),
            ("Assistant", "What is the past tense of 'ir' for 'nosotros'?"),
            ("Leo", "Fuimos. We are planning a family trip to Madrid in August."),
            ("Assistant", "Madrid in August is hot; plan museum visits for the afternoons."),
            ("Leo", "Ava wants to see the Prado. She is nine."),
            ("Assistant", "The Prado has free entry for children, she will love it."),
        ),
    ),
    DemoSession(
        "leo",
        "leo-s3",
        _at(26, 8, 0),
        (
            ("Leo", "I had my first Spanish conversation class yesterday."),
            ("Assistant", "How did it go?"),
            ("Leo", "Better than expected. The teacher says I should read more in Spanish."),
            ("Assistant", "Graded readers are a good start; try one chapter a day."),
            ("Leo", "For the Madrid trip, find restaurants without peanuts on the menu."),
            ("Assistant", "Most tapas bars will tell you the ingredients; carry an allergy card in Spanish."),
        ),
    ),
    DemoSession(
        "harbor-bikes",
        "ticket-101",
        _at(6, 14, 0),
        (
            ("Ines", "Hello, I run Harbor Bikes. We are on the Basic plan with 3 user seats."),
            ("Support", "Thanks Ines. What can I help you with?"),
            ("Ines", "Our invoices should go to billing@harborbikes.example, not to my address."),
            ("Support", "Done: invoices now go to billing@harborbikes.example."),
            ("Ines", "Also, can the booking page show our opening hours?"),
            ("Support", "Yes, under Settings > Booking page > Opening hours."),
        ),
    ),
    DemoSession(
        "harbor-bikes",
        "ticket-117",
        _at(14, 10, 30),
        (
            ("Ines", "The booking page shows the wrong opening hours on Sundays."),
            ("Support", "Sunday hours come from the holiday calendar; is a holiday set?"),
            ("Ines", "Yes, an old Easter entry. Removed it, Sundays look right now."),
            ("Support", "Great. Anything else?"),
            ("Ines", "We will need more seats soon, the Basic plan feels small."),
            ("Support", "The Pro plan has 10 seats and repair-shop scheduling."),
        ),
    ),
    DemoSession(
        "harbor-bikes",
        "ticket-130",
        _at(27, 16, 20),
        (
            ("Ines", "We upgraded to the Pro plan today, we have 10 user seats now."),
            ("Support", "Confirmed, Harbor Bikes is on the Pro plan with 10 seats."),
            ("Ines", "Please make sure invoices still go to billing@harborbikes.example."),
            ("Support", "They do; the billing address did not change with the upgrade."),
            ("Ines", "How do I turn on repair-shop scheduling?"),
            ("Support", "Settings > Workshop > Enable scheduling; it uses your opening hours."),
        ),
    ),
)

# Two rows that must not be stored: each is quarantined with its raw payload and the field that is wrong.
BAD_ROWS: tuple[dict[str, Any], ...] = (
    {
        "tenant": "maya",
        "session": "maya-s2",
        "actor": "Maya",
        "text": "   ",
        "at": "2024-03-09T09:45:00Z",
        "event_id": "maya-s2-blank",
    },
    {
        "tenant": "leo",
        "session": "leo-s2",
        "actor": "Leo",
        "text": "Can we do the quiz tomorrow instead?",
        "at": "next Tuesday",
        "event_id": "leo-s2-when",
    },
)

# Questions the demo asks after the lifecycle ran, one per tenant.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("maya", "Where does Maya live?"),
    ("leo", "What is Leo allergic to?"),
    ("harbor-bikes", "Which plan is Harbor Bikes on?"),
)


def demo_rows() -> Iterator[dict[str, Any]]:
    """The demo's event rows, for ``Memory.observe_many``: every turn of every session, then the two bad rows."""
    for s in SESSIONS:
        for position, (actor, text) in enumerate(s.turns):
            yield {
                "tenant": s.tenant,
                "session": s.session,
                "actor": actor,
                "text": text,
                "at": s.start + position * TURN_SPACING,
                "event_id": f"{s.session}-{position + 1}",
            }
    yield from (dict(row) for row in BAD_ROWS)


def turn_count() -> int:
    """How many valid turns the demo holds."""
    return sum(len(s.turns) for s in SESSIONS)
