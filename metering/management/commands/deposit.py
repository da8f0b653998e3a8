from django.core.management.base import BaseCommand, CommandError

from marketplace.services import ServiceError, account_get
from metering import services
from metering.selectors import balances_get


class Command(BaseCommand):
    help = "Credit money received from outside to an account: deposit ACCOUNT AMOUNT [--reason TEXT]"
    action = staticmethod(services.funds_deposit)

    def add_arguments(self, parser):
        parser.add_argument("account")
        parser.add_argument("amount")
        parser.add_argument("--reason", default="")

    def handle(self, *args, account, amount, reason, **options):
        try:
            acct = account_get(ref=account)
            txn = self.action(account=acct, amount=services.parse_amount(amount), reason=reason)
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        b = balances_get(account=acct)
        self.stdout.write(f"{txn.key}: {acct.slug} available {b['available']}, escrow {b['escrow']}")
