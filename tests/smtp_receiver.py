"""A real SMTP server for the email channel tests (aiosmtpd): appends every message it accepts
to a JSON-lines file, and can refuse the first N messages with 451 to test retries.

    python3 tests/smtp_receiver.py PORT OUT.jsonl [--refuse-first N]

Prints "ready" once it listens on 127.0.0.1:PORT.
"""

import argparse
import asyncio
import email
import email.policy
import json
import time

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, out, refuse_first):
        self.out = out
        self.refuse_left = refuse_first

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_left > 0:
            self.refuse_left -= 1
            return "451 4.3.0 try again later (refused on purpose by the test)"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(message["from"]),
            "to": str(message["to"]),
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "body": message.get_content(),
            "received_ms": int(time.time() * 1000),
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("--refuse-first", type=int, default=0)
    args = parser.parse_args()
    controller = Controller(
        Recorder(args.out, args.refuse_first), hostname="127.0.0.1", port=args.port
    )
    controller.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    asyncio.run(main())
