"""Delivering the outbox: notifications are written in the same database transaction as
what they report, then sent over SMTP here (stdlib smtplib) when it is configured.
Without an SMTP host they wait in the outbox ("pending"); a user without an email
address gets none ("unsent"); an SMTP failure leaves the row pending for the next pass.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from promptex.agent.store import PENDING, SENT_MAIL, UNSENT, AgentStore

log = logging.getLogger("promptex.agent.outbox")


class _Reported:
    waiting: int | None = None  # how many waited when it was last said (said again only when it changes)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = None
    sender: str = "promptex-agent@localhost"
    starttls: bool = True
    timeout: float = 10.0


def deliver(store: AgentStore, smtp: SmtpConfig | None, now: int) -> int:
    """Send what is pending; returns how many were sent."""
    pending = store.notifications((PENDING,))
    if not pending:
        return 0
    if smtp is None:
        if _Reported.waiting != len(pending):  # not every pass: a line every few seconds is noise
            waiting = len(pending)
            log.info("SMTP not configured (PROMPTEX_AGENT_SMTP_HOST): %d notifications wait in the outbox", waiting)
            _Reported.waiting = len(pending)
        return 0
    sent = 0
    for n in pending:
        to = store.email(n.user)
        if not to:
            store.mark_notification(n.id, UNSENT, "the user has no email address", now)
            continue
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = smtp.sender, to, n.subject
        message.set_content(n.body)
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as server:
                if smtp.starttls:
                    server.starttls()
                if smtp.user:
                    server.login(smtp.user, smtp.password or "")
                server.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            store.mark_notification(n.id, PENDING, f"SMTP: {type(exc).__name__}: {exc}", now)
            log.warning("notification %d not sent (%s); retrying next pass", n.id, type(exc).__name__)
            continue
        store.mark_notification(n.id, SENT_MAIL, None, now)
        sent += 1
    return sent
