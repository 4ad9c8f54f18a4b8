"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, for tests and
the sign-up bench."""

from __future__ import annotations

import contextlib
import email
import re
import threading
import time
from collections.abc import Iterator
from email.message import Message

from distillguard.testing.server import free_port

LINK = re.compile(r"https?://\S+")


class Mailbox:
    """Messages received so far; ``wait`` blocks until one more arrives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.url = ""

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
        message = email.message_from_bytes(envelope.content)
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Block until ``count`` messages arrived in all; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.messages)} of {count} mails arrived")
                self._cond.wait(left)
            return list(self.messages)

    @staticmethod
    def links(message: Message) -> list[str]:
        body = message.get_payload(decode=True).decode()
        return LINK.findall(body)


@contextlib.contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """An aiosmtpd server for the block; ``mailbox.url`` is its ``smtp://`` URL."""
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.url = f"smtp://127.0.0.1:{port}"
    try:
        yield box
    finally:
        controller.stop()
