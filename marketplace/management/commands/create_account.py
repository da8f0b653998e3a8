from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from marketplace import services


class Command(BaseCommand):
    help = "Create an account (organization): create_account NAME --roles buyer,provider [--user USERNAME]"

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--roles", default="buyer", help="buyer, provider or buyer,provider")
        parser.add_argument("--user", help="an existing username to make the account's owner")

    def handle(self, *args, name, roles, user, **options):
        roles_set = {r.strip() for r in roles.split(",") if r.strip()}
        if not roles_set <= {"buyer", "provider"}:
            raise CommandError("--roles takes buyer, provider or both")
        owner = None
        if user:
            owner = get_user_model().objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"no user {user!r}")
        try:
            account = services.account_create(
                name=name, is_buyer="buyer" in roles_set, is_provider="provider" in roles_set, owner=owner
            )
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"{account.slug}")
