import eventlib

from .models import Order

#: What ``look_up_order`` found, in call order: (order id, customer or None).
LOOKED_UP: list[tuple[int, str | None]] = []


class OrderPlaced(eventlib.BaseEvent):
    def clean(self):
        self.require_data_keys(["order_id"])

    @eventlib.handler
    def look_up_order(self):
        # Through the "worker" connection, as a worker process would: it sees
        # committed rows only.
        order = Order.objects.using("worker").filter(pk=self.data["order_id"]).first()
        LOOKED_UP.append((self.data["order_id"], order and order.customer))
