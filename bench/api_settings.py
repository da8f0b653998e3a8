"""Settings for bench/api.py only: production settings plus the bench-only ceiling views.

Never used by the application itself; config/urls.py does not know bench/. BENCH_VIEWS mounts
/bench/ceiling and /bench/rows (bench/api_urls.py), and the bench app adds the one table the
write ceiling inserts into, in the bench's own database.
"""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

ROOT_URLCONF = "bench.api_urls"
BENCH_VIEWS = True
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]
