"""LedgerEntry.balance_after: the running balance a statement shows, set when posting.

Existing entries are back-filled from their account's entries in id order. On PostgreSQL the
immutability trigger is disabled for that one UPDATE and re-enabled in the same transaction.
"""

from django.db import migrations, models

BACKFILL = """
UPDATE metering_ledgerentry AS e SET balance_after = r.running
FROM (SELECT id, SUM(amount) OVER (PARTITION BY account_id ORDER BY id) AS running
      FROM metering_ledgerentry) AS r
WHERE e.id = r.id AND e.balance_after IS NULL
"""


def backfill(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if schema_editor.connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE metering_ledgerentry DISABLE TRIGGER ledger_entry_immutable")
            cursor.execute(BACKFILL)
            cursor.execute("ALTER TABLE metering_ledgerentry ENABLE TRIGGER ledger_entry_immutable")
        else:
            cursor.execute(BACKFILL)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0002_ledger_triggers"),
    ]

    operations = [
        migrations.AddField(
            model_name="ledgerentry",
            name="balance_after",
            field=models.DecimalField(decimal_places=2, max_digits=20, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
