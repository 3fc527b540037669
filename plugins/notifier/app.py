"""payflow-edge example plugin (Python, componentize-py): formats a chat message for each
payment event and forwards it to the merchant's `chat` upstream (config `upstream` to name
another). The event itself continues unchanged to the endpoint's own upstream."""

import json

from payflow import forward, header, proceed
from wit_world import exports
from wit_world.imports import host, types

SYMBOLS = {"payment.succeeded": "✅", "payment.failed": "❌", "payment.cancelled": "🚫"}


def money(amount: int, currency: str) -> str:
    """Amounts arrive in the smallest unit; every seed currency has two decimals."""
    return f"{amount // 100:,}.{amount % 100:02d} {currency}"


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> types.Outcome:
        if not event.event_type.startswith("payment."):
            return proceed()
        data = json.loads(event.body).get("data") or {}
        status = event.event_type.split(".", 1)[1]
        who = data.get("customer_email") or "an unknown customer"
        text = (
            f"{SYMBOLS.get(event.event_type, '•')} Payment of "
            f"{money(int(data.get('amount', 0)), data.get('currency', ''))} from {who} {status}"
            f" ({data.get('id', event.id)})"
        )
        host.log(host.Level.INFO, text)
        upstream = host.config("upstream") or "chat"
        message = json.dumps({"text": text}, ensure_ascii=False).encode()
        chat = forward(upstream, message, [header("Content-Type", "application/json")])
        return proceed(forwards=[chat], tags=["notified"])
