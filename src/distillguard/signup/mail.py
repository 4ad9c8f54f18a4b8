"""Sign-up and step-up mail through a real SMTP server, sent off the request path.

Messages wait in a bounded in-memory queue and one thread sends them (``smtplib``), so
a request's answer never waits for the mail server: that would also tell, by its
timing, whether an address already had an account. The queue is thread-safe: the
service queues from the threads where it talks to its store.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import smtplib
import ssl
import threading
import urllib.parse
from email.message import EmailMessage

from distillguard.config import Secret, SettingsError

log = logging.getLogger("distillguard.signup")

_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclasses.dataclass(frozen=True)
class SMTPTarget:
    """Where and how to send: parsed from the ``smtp_url`` setting."""

    scheme: str
    host: str
    port: int
    user: str
    password: Secret

    @classmethod
    def parse(cls, url: Secret) -> SMTPTarget:
        parts = urllib.parse.urlsplit(url.reveal())
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise SettingsError("setting 'smtp_url' must look like smtp://host:25, "
                                "smtp+starttls://user:password@host:587 or "
                                "smtps://user:password@host:465")
        try:
            port = parts.port or _SCHEMES[parts.scheme]
        except ValueError:
            raise SettingsError("setting 'smtp_url' has an invalid port") from None
        return cls(parts.scheme, parts.hostname, port,
                   urllib.parse.unquote(parts.username or ""),
                   Secret(urllib.parse.unquote(parts.password or "")))


class Mailer:
    """Queues messages and sends them one by one; ``sent`` and ``failed`` count them."""

    def __init__(self, target: SMTPTarget, sender: str, *, timeout: float = 10.0,
                 queue_size: int = 1000) -> None:
        self.target = target
        self.sender = sender
        self.timeout = timeout
        self._queue: queue.Queue[EmailMessage | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="signup-mail", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop."""
        import asyncio

        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, self.timeout)
        self._thread = None

    def send(self, to: str, subject: str, text: str) -> bool:
        """Queue a message; False when the queue is full (the caller answers 503)."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            return False
        return True

    def room(self) -> bool:
        """Whether a message would be queued now."""
        return not self._queue.full()

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                self._deliver(message)
                self.sent += 1
            except (OSError, smtplib.SMTPException) as exc:
                self.failed += 1
                # The address is personal data and the server may echo credentials:
                # log the failure's kind only.
                log.error("sign-up mail could not be sent: %s", type(exc).__name__)

    def _deliver(self, message: EmailMessage) -> None:
        t = self.target
        if t.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
        with client:
            if t.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if t.user:
                client.login(t.user, t.password.reveal())
            client.send_message(message)
