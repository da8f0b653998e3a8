from metering import services

from .deposit import Command as DepositCommand


class Command(DepositCommand):
    help = "Pay money out of an account's available balance: withdraw ACCOUNT AMOUNT [--reason TEXT]"
    action = staticmethod(services.funds_withdraw)
