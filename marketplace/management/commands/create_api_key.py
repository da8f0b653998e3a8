from django.core.management.base import BaseCommand, CommandError

from marketplace import services


class Command(BaseCommand):
    help = "Create an API key and print it once: create_api_key ACCOUNT --scopes read,trade,meter"

    def add_arguments(self, parser):
        parser.add_argument("account", help="account slug, name or id")
        parser.add_argument("--scopes", default="read,trade")
        parser.add_argument("--name", default="")

    def handle(self, *args, account, scopes, name, **options):
        try:
            acct = services.account_get(ref=account)
            _, raw = services.api_key_create(account=acct, scopes=[s.strip() for s in scopes.split(",") if s.strip()], name=name)
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
