import eventlib

#: The ids of the events ``notify_customer`` received.
NOTIFIED: list[str] = []


@eventlib.handler("django_project.shop.OrderPlaced")
def notify_customer(event):
    NOTIFIED.append(event.id)
