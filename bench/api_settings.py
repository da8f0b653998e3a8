"""Settings for bench/api.py only: production settings plus one bench-only URL (the ceiling).

Never used by the application itself; config/urls.py does not know bench/.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.api_urls"
